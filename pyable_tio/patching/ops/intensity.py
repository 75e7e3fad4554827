"""Intensity steps of per-patch augmentation, on a region of the volume grid (pyable_tio.patching.augment).

Each runs TorchIO's formula on a box (before the spatial steps) or on the resampled region
(after them): voxel-wise steps as they are, blur on a region widened by its kernel radius
(:func:`kernel_margin`), the bias field at the region's volume coordinates, and
``ZNormalization``/``RescaleIntensity`` with the whole volume's statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchio as tio
from scipy import ndimage as ndi

from ...constants import BLUR_TRUNCATE
from .base import Drawn
from ..split import FIELD, KERNEL, STATISTICS



def kernel_margin(steps: list[Drawn], affine: np.ndarray) -> np.ndarray:
    """Voxels (D, H, W) the blur kernels of ``steps`` reach beyond a region.

    Example:
        >>> kernel_margin([], np.eye(4)).tolist()
        [0, 0, 0]
    """
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    margin = np.zeros(3, dtype=int)
    for d in steps:
        if d.kind == KERNEL:
            stds = np.max([np.asarray(s, float) for s in d.params['per_image'].values()] or [np.zeros(3)], axis=0)
            margin += (BLUR_TRUNCATE * stds / spacing + 0.5).astype(int)  # scipy's kernel radius
    return margin


def apply_intensity(d: Drawn, tensors: dict[str, torch.Tensor], region_start: np.ndarray, context: Any) -> None:
    """Apply one drawn intensity step, in place in ``tensors``, to a region starting at ``region_start``.

    Args:
        d: The drawn step.
        tensors: C x D x H x W tensors of the region, by image name (replaced by the results).
        region_start: The region's first voxel in the volume (D, H, W).
        context: The patch's ``patching.augment`` context (volumes, statistics, generator).

    Example:
        >>> apply_intensity(drawn_gamma, {'images': box}, np.zeros(3, int), context)  # doctest: +SKIP
    """
    for name in d.names:
        tensor = tensors[name].float()
        step, per_image = d.step, d.params.get('per_image', {})
        if isinstance(step, (tio.RandomGamma, tio.Gamma)):
            if d.params['invert']:
                tensor = torch.stack([c * _power(c.clone(), 1 - g) for c, g in zip(tensor, per_image[name])])
            else:
                for channel, gamma in zip(tensor, per_image[name]):
                    _power(channel, gamma)  # in place: the region is this patch's own copy
        elif isinstance(step, tio.RandomNoise):
            mean, std = per_image[name]
            tensor = tensor + torch.randn(tensor.shape, generator=context.generator) * std + mean
        elif isinstance(step, tio.Clamp):
            tensor = tensor.clamp(step.out_min, step.out_max)
        elif d.kind == KERNEL:
            spacing = np.linalg.norm(context.volumes[name].affine[:3, :3], axis=0)
            std = np.asarray(per_image[name], float) / spacing
            tensor = torch.stack([torch.as_tensor(ndi.gaussian_filter(c.numpy(), std)) for c in tensor])
        elif d.kind == FIELD:
            field = _bias_field(context.shape, region_start, tensor.shape[1:], d.params['order'], per_image[name])
            tensor = tensor * torch.as_tensor(1 / field if d.params['invert'] else field)
        elif d.kind == STATISTICS:
            tensor = _normalize(step, tensor, context.normalization(step, name), name, context)
        tensors[name] = tensor


def _power(tensor: torch.Tensor, gamma: float) -> torch.Tensor:
    """TorchIO's ``power`` (sign-preserving when there are negatives) as exp(gamma log|x|), in place.

    Vectorised exp/log run ~1.6x faster than ``pow`` with a float exponent on CPU; the
    results differ by about one float32 rounding (relative 1e-6). In place, without the
    ``abs``/``sign`` copies when nothing is negative (the usual MRI case): 1.8x faster again.
    """
    if tensor.min() < 0:
        sign = tensor.sign()
        return tensor.abs_().log_().mul_(gamma).exp_().mul_(sign)
    return tensor.log_().mul_(gamma).exp_()


def _normalize(step: tio.Transform, tensor: torch.Tensor, stats: dict[str, Any], name: str,
               context: Any) -> torch.Tensor:
    subject_id = context.subject.get('id', '')
    if 'channels' in stats:  # pyable_tio.transforms.IntensityNormalization: per channel
        return torch.stack([(channel - mean) / std for channel, (mean, std) in zip(tensor, stats['channels'])])
    if isinstance(step, tio.ZNormalization):
        if stats['std'] == 0:
            raise RuntimeError(f'subject {subject_id!r}: standard deviation is 0 for masked values in image "{name}"')
        return (tensor - stats['mean']) / stats['std']
    if stats.get('empty') or stats.get('flat'):
        return tensor  # TorchIO leaves the image unchanged (it warns on the whole volume)
    array = tensor.clamp(*stats['cutoff'])
    return (array - stats['in_min']) / (stats['in_max'] - stats['in_min']) * (step.out_max - step.out_min) + step.out_min


def _bias_field(shape: np.ndarray, start: np.ndarray, size: Sequence[int], order: int,
                coefficients: Sequence[float]) -> np.ndarray:
    """``BiasField.generate_bias_field`` of the whole volume, evaluated on one region only."""
    axes = []
    for n, a, m in zip(shape, start, size):
        full = np.arange(-n / 2, n / 2) + 0.5
        axes.append((full / full.max() if full.max() > 0 else full)[a:a + m])
    x, y, z = np.meshgrid(*axes, indexing='ij')
    field = np.zeros(tuple(int(m) for m in size))
    i = 0
    for x_order in range(order + 1):
        for y_order in range(order + 1 - x_order):
            for z_order in range(order + 1 - (x_order + y_order)):
                field += coefficients[i] * x**x_order * y**y_order * z**z_order
                i += 1
    return np.exp(field).astype(np.float32)
