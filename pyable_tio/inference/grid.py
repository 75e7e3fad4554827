"""Whole-volume inference patch by patch: ``tio.GridSampler`` + ``tio.GridAggregator``.

Grid locations are index ranges over a tensor's spatial dimensions, so TorchIO's grid sampler
and aggregator work unchanged on pyable-tio's Z,Y,X tensors: ``patch_size`` and
``patch_overlap`` are (D, H, W) and the aggregated output is C x D x H x W on the subject's grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torchio as tio

from ..constants import OVERLAP_MODES
from ..errors import describe


class SubjectGridAggregator(tio.GridAggregator):
    """A ``tio.GridAggregator`` that averages exactly and returns an image on the subject's grid.

    ``"crop"`` is TorchIO's own code. ``"average"`` and ``"hann"`` sum the weighted patches
    in float64 (TorchIO sums in float32), so an identity model gives back the input exactly;
    the output has the patches' floating dtype (float32 for integer patches).

    Args:
        sampler: The ``tio.GridSampler`` that cut the patches.
        affine: The subject's 4 x 4 affine (columns in Z,Y,X order), given to the output image.
        overlap_mode: ``"crop"``, ``"average"`` or ``"hann"``.

    Example:
        >>> aggregator.add_batch(model(batch['images'][tio.DATA]), batch[tio.LOCATION])  # doctest: +SKIP
        >>> aggregator.get_output_image(label=True).data.shape  # C x D x H x W  # doctest: +SKIP
    """

    def __init__(self, sampler: tio.GridSampler, affine: np.ndarray, overlap_mode: str = 'crop'):
        super().__init__(sampler, overlap_mode=overlap_mode)
        self.affine = affine
        self._sum: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None
        self._dtype = torch.float32

    def add_batch(self, batch_tensor: torch.Tensor, locations: torch.Tensor) -> None:
        """Add B x C x D x H x W model outputs at their ``tio.LOCATION`` rows (B x 6)."""
        if self.overlap_mode == 'crop':
            super().add_batch(batch_tensor, locations)
            return
        batch = batch_tensor.detach().cpu()
        rows = locations.cpu().numpy().astype(int)
        # Check every patch before adding any, so a bad batch leaves the sums untouched.
        for patch, row in zip(batch, rows):
            i0, j0, k0, i1, j1, k1 = row
            if tuple(patch.shape[1:]) != (i1 - i0, j1 - j0, k1 - k0):
                raise RuntimeError(f'patch shape {tuple(patch.shape[1:])} does not match its location {row.tolist()}')
        if self._sum is None:
            self._sum = torch.zeros(batch.shape[1], *self.spatial_shape, dtype=torch.float64)
            self._weights = torch.zeros(1, *self.spatial_shape, dtype=torch.float64)
            self._dtype = batch.dtype if batch.is_floating_point() else torch.float32
        if self.overlap_mode == 'hann':
            window = self._get_hann_window(self.patch_size).to(torch.float64)[None]
        else:
            window = torch.ones(1, *self.patch_size.tolist(), dtype=torch.float64)
        for patch, (i0, j0, k0, i1, j1, k1) in zip(batch, rows):
            self._sum[:, i0:i1, j0:j1, k0:k1] += patch.to(torch.float64) * window
            self._weights[:, i0:i1, j0:j1, k0:k1] += window

    def get_output_tensor(self) -> torch.Tensor:
        """The aggregated C x D x H x W volume (Z,Y,X)."""
        if self.overlap_mode == 'crop':
            return super().get_output_tensor()
        if self._sum is None:
            raise RuntimeError('no batch was added to the aggregator')
        output = (self._sum / self._weights).to(self._dtype)
        if self.volume_padded:
            border = (self.patch_overlap // 2).tolist()
            ends = [n - b for n, b in zip(output.shape[1:], border)]
            output = output[:, border[0]:ends[0], border[1]:ends[1], border[2]:ends[2]]
        return output

    def get_output_image(self, label: bool = False) -> tio.Image:
        """The aggregated C x D x H x W prediction as a ``tio.LabelMap`` or ``tio.ScalarImage``.

        Args:
            label: Return a ``LabelMap`` (for class indices) instead of a ``ScalarImage``.
        """
        image_class = tio.LabelMap if label else tio.ScalarImage
        return image_class(tensor=self.get_output_tensor(), affine=self.affine)


class GridInference(NamedTuple):
    """What :func:`inference_loader` returns: unpack as ``loader, aggregator = ...``.

    Example:
        >>> loader, aggregator = inference_loader(subject, 16)  # doctest: +SKIP
    """

    loader: tio.SubjectsLoader
    aggregator: SubjectGridAggregator


def inference_loader(
    subject: tio.Subject,
    patch_size: int | Sequence[int],
    patch_overlap: int | Sequence[int] = 0,
    batch_size: int = 4,
    overlap_mode: str = 'crop',
    num_workers: int = 0,
    padding_mode: str | float | None = None,
) -> GridInference:
    """A loader of every patch of ``subject`` on a grid, and the aggregator that rebuilds the volume.

    Each batch holds the subject's images as B x C x D x H x W (Z,Y,X) patches and their
    locations under ``tio.LOCATION`` (``[d0, h0, w0, d1, h1, w1]`` index ranges). Feed the
    model's outputs with their locations to ``aggregator.add_batch``; then
    ``aggregator.get_output_tensor()`` is the C x D x H x W prediction on the subject's grid
    and ``aggregator.get_output_image()`` is that tensor with the subject's affine.

    Args:
        subject: A subject (e.g. ``dataset[i]``); its images are loaded here.
        patch_size: (D, H, W), or an int for cubes (2-D subjects, D = 1, take ``(1, n, n)``).
        patch_overlap: Even (D, H, W) overlap between neighbouring patches, or an int
            (not applied along D for 2-D subjects).
        batch_size: Patches per batch.
        overlap_mode: ``"crop"`` (keep each patch's centre), ``"average"`` or ``"hann"``
            (weighted by a Hann window), both summed in float64.
        num_workers: Worker processes cutting patches.
        padding_mode: If not None, pad the volume by half the overlap first (see
            ``tio.GridSampler``); the aggregator crops the padding away.

    Returns:
        ``GridInference(loader, aggregator)``.

    Raises:
        ValueError: unknown overlap mode, odd overlap, overlap >= patch, patch larger than the volume.

    Example:
        >>> loader, aggregator = inference_loader(subject, (32, 64, 64), patch_overlap=8)  # doctest: +SKIP
        >>> with torch.no_grad():  # doctest: +SKIP
        ...     for batch in loader:
        ...         aggregator.add_batch(model(batch['images'][tio.DATA]), batch[tio.LOCATION])
        >>> prediction = aggregator.get_output_tensor()  # C x D x H x W  # doctest: +SKIP
    """
    if overlap_mode not in OVERLAP_MODES:
        raise ValueError(f'overlap_mode must be one of {OVERLAP_MODES}, got {overlap_mode!r}')
    subject.load()
    shape = tuple(subject.spatial_shape)
    patch = _triplet(patch_size, 'patch_size', shape, minimum=1)
    overlap = _triplet(patch_overlap, 'patch_overlap', shape, minimum=0)
    # padding_mode pads overlap // 2 on each side; TorchIO's own error names no subject.
    padded = tuple(s + (o // 2) * 2 if padding_mode is not None else s for s, o in zip(shape, overlap))
    if any(p > s for p, s in zip(patch, padded)):
        where = 'padded grid shape (D, H, W)' if padding_mode is not None else 'grid shape (D, H, W)'
        problem = f'{where} {tuple(int(n) for n in padded)} is smaller than patch_size {patch}; use a smaller patch'
        raise ValueError(describe(_subject_id(subject), 'inference_loader', problem))
    sampler = tio.GridSampler(subject, patch_size=patch, patch_overlap=overlap, padding_mode=padding_mode)
    loader = tio.SubjectsLoader(sampler, batch_size=batch_size, num_workers=num_workers)
    affine = np.asarray(subject.get_first_image().affine, dtype=float)
    aggregator = SubjectGridAggregator(sampler, affine, overlap_mode=overlap_mode)
    return GridInference(loader, aggregator)


def predict_subject(
    model: Callable[[torch.Tensor], torch.Tensor],
    subject: tio.Subject,
    patch_size: int | Sequence[int],
    image_key: str = 'images',
    patch_overlap: int | Sequence[int] = 0,
    batch_size: int = 4,
    overlap_mode: str = 'crop',
    device: torch.device | str | None = None,
    label: bool = False,
) -> tio.Image:
    """Run ``model`` over the whole subject patch by patch (no gradients) and aggregate.

    Args:
        model: Maps B x C x D x H x W inputs to B x C' x D x H x W outputs.
        subject: The subject to segment.
        patch_size: (D, H, W) or an int.
        image_key: Subject key of the model's input image.
        patch_overlap: See :func:`inference_loader`.
        batch_size: Patches per forward pass.
        overlap_mode: See :func:`inference_loader`.
        device: Where the model runs; outputs are aggregated on the CPU.
        label: Return a ``tio.LabelMap`` (e.g. when ``model`` returns class indices).

    Returns:
        The C' x D x H x W prediction with the subject's affine.

    Example:
        >>> logits = predict_subject(model, dataset[0], (32, 32, 32), patch_overlap=8)  # doctest: +SKIP
        >>> labels = logits.data.argmax(0, keepdim=True)  # 1 x D x H x W  # doctest: +SKIP
    """
    loader, aggregator = inference_loader(subject, patch_size, patch_overlap, batch_size, overlap_mode)
    with torch.no_grad():
        for batch in loader:
            inputs = batch[image_key][tio.DATA]
            if device is not None:
                inputs = inputs.to(device)
            aggregator.add_batch(model(inputs).cpu(), batch[tio.LOCATION])
    return aggregator.get_output_image(label=label)


def _subject_id(subject: tio.Subject) -> str | None:
    value = subject.get('id')
    return str(value) if value is not None else None


def _triplet(
    value: int | Sequence[int], name: str, shape: Sequence[int], minimum: int
) -> tuple[int, int, int]:
    if isinstance(value, int):
        # 2-D subjects are C x 1 x H x W: an int applies to H and W only.
        triplet = (1 if minimum else 0, value, value) if shape[0] == 1 else (value,) * 3
    else:
        triplet = tuple(int(n) for n in value)
    if len(triplet) != 3 or min(triplet) < minimum:
        raise ValueError(f'{name} must be an int or 3 ints >= {minimum} (D, H, W), got {value!r}')
    return triplet
