"""The SimpleITK engine: the oracle of the per-patch path (``engine="sitk"``).

Each image is resampled with SimpleITK's ``ResampleImageFilter``, once per channel, with the
composed output-to-input transform of the patch's spatial steps (built by the ops with
TorchIO's own helpers, :mod:`.ops.spatial`). It is what TorchIO itself runs on whole volumes:
a deterministic step per patch equals the whole-volume step about the same centre, cropped,
bit for bit. The numba engine (:mod:`.kernel`) is proved equal to it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio

from ..geometry.grid import ras_affine_to_grid


def resample(channels: list[np.ndarray], volume: Any, box_start: np.ndarray, out_start: np.ndarray,
              out_stop: np.ndarray, transform: sitk.Transform, interpolation: str, pads: list[float]) -> torch.Tensor:
    """Each channel of the box resampled onto the output region (labels keep their dtype)."""
    label = volume.label
    resampler = sitk.ResampleImageFilter()
    if threading.current_thread() is not threading.main_thread():
        resampler.SetNumberOfThreads(1)  # the queue's threads already use every core
    output = ras_affine_to_grid(volume.affine_at(out_start), out_stop - out_start)
    resampler.SetSize(output.size)
    resampler.SetOutputOrigin(output.origin)
    resampler.SetOutputSpacing(output.spacing)
    resampler.SetOutputDirection(output.direction)
    resampler.SetTransform(transform)
    resampler.SetInterpolator(tio.Transform.get_sitk_interpolator(interpolation))
    box = ras_affine_to_grid(volume.affine_at(box_start), channels[0].shape)
    out = None
    for index, (channel, pad) in enumerate(zip(channels, pads)):
        # SimpleITK's index order is the array's reversed (W, H, D): a plain (strided) copy, no transpose.
        source = sitk.GetImageFromArray(channel)
        source.SetOrigin(box.origin)
        source.SetSpacing(box.spacing)
        source.SetDirection(box.direction)
        resampler.SetDefaultPixelValue(float(pad))
        resampler.SetOutputPixelType(source.GetPixelID() if label else sitk.sitkFloat32)
        resampled = resampler.Execute(source)  # kept alive while its array view is read
        view = sitk.GetArrayViewFromImage(resampled)
        if out is None:
            dtype = volume.patch_dtype() if label else view.dtype
            out = torch.from_numpy(np.empty((len(pads), *view.shape), dtype=dtype))
        out[index].numpy()[...] = view  # one copy, straight into the stacked tensor
        del view, resampled
    return out

