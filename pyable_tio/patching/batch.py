"""The device side of augmentation on the batch: one sampling grid per sample, one call per batch.

:class:`BatchAugmenter` turns a list of :class:`pyable_tio.patching.boxes.BoxSample` into a
batch like ``tio.SubjectsLoader``'s (``batch[name][tio.DATA]`` B x C x D x H x W, per-sample
``tio.AFFINE`` and ``tio.LOCATION``, the subjects' other fields), augmented on a device:

1. the boxes of one image key, in their stored dtype, are padded to a common size (edge
   values, which the sampling rules below never tell apart from the box's own edge) and
   stacked; images whose maps agree in every sample share one stack; on CUDA the stack is
   pinned and copied without blocking;
2. intensity steps drawn before the spatial ones run on the boxes (``apply_batch``);
3. each sample's composed map (every spatial step, flips included, as one 4 x 4 matrix from
   patch voxel to volume voxel) gives the volume index of every patch voxel, in float64,
   then its place in the box. Images
   are sampled trilinear by one ``torch.nn.functional.grid_sample`` call per stack
   (``align_corners=True``, so normalised -1 and 1 are the first and last voxel centres;
   the last grid axis is (x, y, z) = (W, H, D), the reverse of the tensors' Z, Y, X);
   labels (and maps that only flip and shift whole voxels) are sampled nearest by one
   ``gather`` per stack, rounding half up and keeping their integer dtype. The output is the
   patch itself: the crop out of the box is part of the grid;
4. the rules are the numba kernel's and SimpleITK's: a point is inside when
   ``-0.5 <= i < n - 0.5`` on every box axis (the box is clipped to the volume, so this is
   the volume's rule), trilinear clamps to the edge voxel within that half voxel
   (``padding_mode="border"``), outside points take the channel's pad value;
5. intensity steps after the spatial ones run on the patches (``apply_batch``).

Deterministic steps give the per-patch path's patches: images within float32 rounding of
the grid (1e-5 relative), labels identical: each map is evaluated in the volume's frame with
the numba kernel's float64 sums, so even points exactly half-way between voxels round alike
(``tests/test_device_batch.py`` counts any difference, which may only lie at such a tie).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio

from .boxes import BoxSample
from .ops.base import SPATIAL, PatchOp
from .ops.intensity import IntensityOp
from .ops.spatial import as_crop
from .split import TransformPlan, spatial_run
from .volume import is_label


class BatchAugmenter:
    """Collate :class:`BoxSample` lists into augmented batches on ``device``.

    Args:
        plan: The split whose :attr:`~pyable_tio.patching.split.TransformPlan.batch_ops` run here.
        device: Where the batch is augmented (``"cuda"``, ``"cuda:1"``, ``"cpu"``, a ``torch.device``).

    Example:
        >>> augment = BatchAugmenter(pt.plan_transform(T, 'cpu'), 'cpu')  # doctest: +SKIP
        >>> batch = augment([queue[i] for i in range(4)])  # doctest: +SKIP
    """

    def __init__(self, plan: TransformPlan, device: str | torch.device) -> None:
        self.plan = plan
        self.device = torch.device(device)
        # float64 grids round half-voxel points as the per-patch kernel does; MPS has no float64.
        self.precision = torch.float32 if self.device.type == 'mps' else torch.float64
        self.ops: tuple[PatchOp, ...] = plan.batch_ops
        lo, hi = spatial_run([op.kind for op in self.ops])
        # Intensity steps before the spatial run act on the boxes, the others on the patches.
        self.pre = [i for i in range(lo) if self.ops[i].kind != SPATIAL]
        self.post = [i for i in range(hi, len(self.ops)) if self.ops[i].kind != SPATIAL]

    def __call__(self, samples: Sequence[BoxSample]) -> dict[str, Any]:
        samples = [s if isinstance(s, BoxSample) else BoxSample.of_patch(s, len(self.ops)) for s in samples]
        batch = tio.SubjectsLoader._collate([s.patch for s in samples])
        size = tuple(int(n) for n in (batch[tio.LOCATION][0, 3:] - batch[tio.LOCATION][0, :3]))
        names = list(samples[0].boxes)
        for group in self._groups(samples, names):
            outputs = self._sample(samples, group, size)
            for name, tensor in zip(group, outputs):
                for i in self.post:
                    tensor = self._apply(i, samples, tensor, name)
                batch[name][tio.DATA] = tensor
        return batch

    # ------------------------------------------------------------------------------------------

    def _groups(self, samples: Sequence[BoxSample], names: list[str]) -> list[list[str]]:
        """Image names sampled together: same kind (image or label), dtype and mode, and the same map in every sample."""
        groups: list[list[str]] = []
        for name in names:
            for group in groups:
                first = group[0]
                if all(s.modes[name] == s.modes[first] and s.boxes[name].dtype == s.boxes[first].dtype
                       and is_label(s.patch[name]) == is_label(s.patch[first])
                       and s.boxes[name].shape[1:] == s.boxes[first].shape[1:]
                       and np.array_equal(s.maps[name], s.maps[first]) for s in samples):
                    group.append(name)
                    break
            else:
                groups.append([name])
        return groups

    def _sample(self, samples: Sequence[BoxSample], group: list[str], size: tuple[int, int, int]) -> list[torch.Tensor]:
        """The patches of the images in ``group`` (one stack, one sampling call), split per image."""
        first = group[0]
        channels = [samples[0].boxes[name].shape[0] for name in group]
        real = torch.tensor([s.boxes[first].shape[1:] for s in samples], dtype=torch.float64)
        common = tuple(int(n) for n in real.max(dim=0).values)
        # One copy of every box, straight into (pinned, on CUDA) memory, then one transfer.
        stack = torch.empty((len(samples), sum(channels), *common), dtype=samples[0].boxes[first].dtype,
                            pin_memory=self.device.type == 'cuda')
        for out, sample in zip(stack, samples):
            channel = 0
            for name in group:
                box = sample.boxes[name]
                _edge_pad(box, out[channel:channel + box.shape[0]])
                channel += box.shape[0]
        stack = stack.to(self.device, non_blocking=True)
        matrices = torch.as_tensor(np.stack([s.maps[first] for s in samples]), dtype=torch.float64)
        pads = torch.tensor([[v for name in group for v in s.pads[name]] for s in samples], dtype=torch.float64)
        crop_only = all(as_crop(s.maps[first]) is not None for s in samples)
        nearest = samples[0].modes[first] == 'nearest' or crop_only
        label = is_label(samples[0].patch[first])
        if self.pre and not label:
            stack = self._pre(samples, group, channels, stack)
            for out, sample in zip(stack, samples):  # the padding repeats the edge as changed (e.g. noise)
                _edge_pad(out[(slice(None), *(slice(0, n) for n in sample.boxes[first].shape[1:]))], out)
        # Volume indices (d, h, w), each B x D x H x W, then in the box: first voxel `start`, `real` voxels.
        coordinates = self._coordinates(matrices.to(self.precision).to(self.device), size)
        start = torch.as_tensor(np.stack([s.box_start for s in samples]), dtype=self.precision).to(self.device)
        real = real.to(self.device, self.precision)
        inside = None
        for axis, values in enumerate(coordinates):
            low = start[:, axis, None, None, None]
            within = (values >= low - 0.5) & (values < low + real[:, axis, None, None, None] - 0.5)
            inside = within if inside is None else inside.logical_and_(within)
        if nearest:  # images come out float32 (their pad values too), labels in their dtype
            out = _gather_nearest(stack if label else stack.float(), coordinates, start, common)
        else:
            out = _trilinear(stack.float(), [v - start[:, a, None, None, None] for a, v in enumerate(coordinates)],
                             common)
        pad = pads.to(device=self.device, dtype=out.dtype)[:, :, None, None, None]
        out = torch.where(inside[:, None], out, pad)
        if not label:
            out = out.float()  # images are float32, labels keep their dtype
        return list(torch.split(out, channels, dim=1))

    def _pre(self, samples: Sequence[BoxSample], group: list[str], channels: list[int],
             stack: torch.Tensor) -> torch.Tensor:
        parts = list(torch.split(stack.float(), channels, dim=1))
        starts = [s.box_start for s in samples]
        for j, name in enumerate(group):
            for i in self.pre:
                parts[j] = self._apply(i, samples, parts[j], name, starts)
        return torch.cat(parts, dim=1)

    def _apply(self, index: int, samples: Sequence[BoxSample], tensor: torch.Tensor, name: str,
               starts: Sequence[Any] | None = None) -> torch.Tensor:
        """Batch step ``index`` on image ``name``; ``starts``: each region's first voxel in the
        volume (the boxes'; default the patches')."""
        params = [None if s.params[index] is None else s.params[index].get(name) for s in samples]
        if all(p is None for p in params):
            return tensor
        if starts is None:
            starts = [s.patch[tio.LOCATION][:3].tolist() for s in samples]
        params = [None if p is None else {**p, 'region_start': [int(v) for v in start]}
                  for p, start in zip(params, starts)]
        op: IntensityOp = self.ops[index]
        return op.apply_batch(params, tensor.float(), name)

    def _coordinates(self, matrices: torch.Tensor, size: tuple[int, int, int]) -> list[torch.Tensor]:
        """Volume index of every patch voxel, one B x D x H x W float64 tensor per axis (d, h, w).

        Summed in the numba kernel's order, ``((m0 i + m1 j) + m3) + m2 k``, so that points
        exactly half-way between voxels round as they do per patch.
        """
        i, j, k = (torch.arange(n, dtype=self.precision, device=self.device) for n in size)
        m = matrices[:, :3, :, None, None, None]  # B x 3 x 4 x 1 x 1 x 1
        rows = (m[:, :, 0] * i[:, None, None] + m[:, :, 1] * j[None, :, None]) + m[:, :, 3]
        return list((rows + m[:, :, 2] * k[None, None, :]).unbind(1))


def _edge_pad(box: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``box`` (C x d x h x w) copied into ``out`` (C x D x H x W, larger or equal), its last voxel
    repeated on each axis."""
    d, h, w = box.shape[1:]
    out[:, :d, :h, :w] = box
    out[:, d:, :h, :w] = box[:, d - 1:d]
    out[:, :, h:, :w] = out[:, :, h - 1:h, :w]
    out[:, :, :, w:] = out[:, :, :, w - 1:w]
    return out


def _trilinear(stack: torch.Tensor, coordinates: list[torch.Tensor], common: tuple[int, int, int]) -> torch.Tensor:
    """One batched ``grid_sample`` at box indices ``coordinates`` ((d, h, w), each B x D x H x W)."""
    # align_corners=True: -1 and 1 are the centres of the first and last voxel; grid_sample's
    # last axis is (x, y, z) = (W, H, D), the reverse of the tensors' order.
    grid = torch.stack([(values * (2 / max(n - 1, 1)) - 1).to(stack.dtype)
                        for values, n in zip(reversed(coordinates), reversed(common))], dim=-1)
    return F.grid_sample(stack, grid, mode='bilinear', padding_mode='border', align_corners=True)


def _gather_nearest(stack: torch.Tensor, coordinates: list[torch.Tensor], start: torch.Tensor,
                    common: tuple[int, int, int]) -> torch.Tensor:
    """Nearest voxel (rounding half up, as ITK) at volume indices ``coordinates`` of boxes starting at
    ``start`` (B x 3), one ``gather``, in the stack's dtype."""
    # Rounded in the volume's frame (as the numba kernel); outside points are clamped here and
    # replaced by the pad value afterwards.
    d, h, w = ((values + 0.5).floor_().sub_(start[:, a, None, None, None]).clamp_(0, n - 1).long()
               for a, (values, n) in enumerate(zip(coordinates, common)))
    flat = (d * common[1] + h) * common[2] + w  # B x D x H x W
    b, c = stack.shape[:2]
    values = stack.reshape(b, c, -1).gather(2, flat.reshape(b, 1, -1).expand(b, c, -1))
    return values.reshape(b, c, *flat.shape[1:])


class DeviceLoader:
    """Batches of a :class:`pyable_tio.patching.boxes.BoxQueue`, augmented on a device.

    Iterating gives dicts like ``tio.SubjectsLoader``'s; ``len()`` is the number of batches
    per epoch. Built by :func:`pyable_tio.patch_loader`.

    Args:
        queue: The queue of box samples.
        batch_size: Patches per batch.
        device: Where the batch steps run.
        drop_last: Drop the last, smaller batch.

    Example:
        >>> for batch in DeviceLoader(queue, 4, 'cuda'):  # doctest: +SKIP
        ...     batch['images'][tio.DATA].device
        device(type='cuda', index=0)
    """

    def __init__(self, queue: Any, batch_size: int, device: str | torch.device, drop_last: bool = False) -> None:
        self.queue = queue
        self.batch_size = batch_size
        self.augment = BatchAugmenter(queue.plan, device)
        self._loader = torch.utils.data.DataLoader(queue, batch_size=batch_size, num_workers=0, drop_last=drop_last,
                                                   collate_fn=list)

    @property
    def plan(self) -> TransformPlan:
        """Where each step of the transform runs."""
        return self.queue.plan

    @property
    def device(self) -> torch.device:
        """The device batches are augmented on."""
        return self.augment.device

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for samples in self._loader:
            yield self.augment(samples)
