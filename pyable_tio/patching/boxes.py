"""The worker side of augmentation on the batch: each patch's box, plus its drawn parameters.

For :func:`pyable_tio.patch_loader` with a ``device``, the queue's workers do not augment.
For each patch they draw the location and the steps' parameters exactly as the per-patch
path does (the same ops, :mod:`pyable_tio.patching.ops`, from the subject's own generator),
then read the patch's box: the preimage of the patch under the drawn spatial steps, plus the
interpolator's support, clipped to the volume (as :mod:`pyable_tio.patching.augment`
computes it), from the reader's arrays (the cache's memory maps) in the stored dtype. A
:class:`BoxSample` carries the box, the composed output-to-input map of every image (a 4 x 4
matrix from patch voxel to box voxel), the interpolator and pad values, and the parameters of
the batch steps. :mod:`pyable_tio.patching.batch` collates the samples and augments the
batch on the device.

Steps that do not run on a batch (:meth:`pyable_tio.patching.ops.base.PatchOp.batchable`)
run here per patch first, as they do without a device; the batch then gets the finished
patch as its box (:func:`pyable_tio.patching.split.batch_split`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchio as tio

from ..constants import PATCH_ENGINE_DEFAULT
from .augment import PatchContext, augment_patch, pad_values, preimage_box, spatial_maps, translation
from .cutting import SubjectPatches, cut_patch
from .ops.base import SPATIAL, PatchOp
from .queue import PatchQueue
from .split import TransformPlan, batch_split, spatial_run
from .volume import Volume


@dataclass
class BoxSample:
    """One patch before its batch steps: the box read around it and how to sample it.

    Attributes:
        patch: The patch as :func:`pyable_tio.patching.cutting.cut_patch` builds it (affines,
            ``tio.LOCATION``, history, subject fields), each image's data a 1-voxel placeholder.
        boxes: Per image, the C x d x h x w box (the stored dtype; float32 after per-patch steps).
        box_start: The box's first voxel in the volume (D, H, W).
        maps: Per image, patch voxel index (D, H, W) to volume voxel index, 4 x 4 (float64):
            the frame the numba kernel evaluates it in, so half-voxel points round alike.
        modes: Per image, ``"linear"`` or ``"nearest"``.
        pads: Per image, the value of each channel where the map leaves the box.
        params: Per batch step, per image name, the step's parameters
            (:meth:`pyable_tio.patching.ops.intensity.IntensityOp.batch_params` included);
            None where the step did not fire. Spatial steps are in ``maps`` (None here).
    """

    patch: tio.Subject
    boxes: dict[str, torch.Tensor]
    box_start: np.ndarray
    maps: dict[str, np.ndarray]
    modes: dict[str, str]
    pads: dict[str, list[float]]
    params: list[dict[str, dict[str, Any]] | None] = field(default_factory=list)

    @classmethod
    def of_patch(cls, patch: tio.Subject, steps: int) -> BoxSample:
        """A patch already cut (and augmented) whole, e.g. by a sampler that loads subjects:
        its box is itself, and none of the ``steps`` batch steps fire on it."""
        boxes, maps, modes, pads = {}, {}, {}, {}
        for name, image in patch.get_images_dict(intensity_only=False).items():
            boxes[name] = image.data
            maps[name], modes[name], pads[name] = np.eye(4), 'nearest', [0.0] * image.data.shape[0]
            image.set_data(torch.zeros((image.data.shape[0], 1, 1, 1), dtype=image.data.dtype))
        return cls(patch, boxes, np.zeros(3, dtype=int), maps, modes, pads, [None] * steps)


def box_sample(ops: Sequence[PatchOp], batch_ops: Sequence[PatchOp], subject: tio.Subject,
               volumes: dict[str, Volume], start: Sequence[int], size: Sequence[int], generator: torch.Generator,
               engine: str = PATCH_ENGINE_DEFAULT) -> BoxSample:
    """The :class:`BoxSample` of the patch at ``start``: ``ops`` (per patch) applied, ``batch_ops`` drawn.

    Args:
        ops: Steps run here, per patch (the ops before ``batch_ops``).
        batch_ops: Steps run on the batch (:attr:`pyable_tio.patching.split.TransformPlan.batch_ops`).
        subject: The subject (its images need not be loaded).
        volumes: Image name -> :class:`pyable_tio.patching.volume.Volume`.
        start: Patch start (D, H, W voxel index).
        size: Patch size (D, H, W).
        generator: Draws the steps' random parameters (the subject's).
        engine: Resampling engine of the per-patch steps.

    Example:
        >>> sample = box_sample((), plan.batch_ops, subject, volumes, (0, 8, 8), (32, 32, 32), generator)  # doctest: +SKIP
        >>> sample.boxes['images'].dtype  # the cache's stored dtype  # doctest: +SKIP
        torch.int16
    """
    first = next(iter(volumes.values()))
    shape = np.array(first.shape)
    start, size = np.asarray(start, int), np.asarray(size, int)
    applied: list[tio.Transform] = []
    tensors = None
    if ops:  # the per-patch part: the batch gets the finished patch
        tensors, applied = augment_patch(ops, subject, volumes, start, size, generator, engine)
    channels = {name: volume.channels for name, volume in volumes.items()}
    drawn = [op.draw(subject, channels, generator) for op in batch_ops]
    lo, hi = spatial_run([op.kind for op in batch_ops])
    spatial = [d for d in drawn[lo:hi] if d is not None]
    late = [d for d in drawn[hi:] if d is not None and d.kind == SPATIAL]  # flips (plan_transform)
    context = PatchContext(subject, volumes, shape, generator)

    maps = spatial_maps(spatial, volumes, start, size, shape, 'numba')
    if tensors is None:
        box_start, box_stop = preimage_box(maps, spatial, volumes, start, start + size, shape)
        boxes = {name: volume.crop(tuple(box_start), tuple(box_stop)) for name, volume in volumes.items()}
    else:  # the finished patch: its spatial batch steps are only flips (batch_split)
        boxes, box_start = tensors, start
    from_patch = translation(start)
    matrices, modes, pads = {}, {}, {}
    for name, volume in volumes.items():
        matrix = maps[name].matrix if name in maps else np.eye(4)
        for d in late:  # flips after intensity steps reverse the finished patch: the map's last factor
            if name in d.names:
                flip = d.op.index_map(d, volume, start, size, shape)
                matrix = matrix if flip is None else matrix @ flip
        matrices[name] = matrix @ from_patch
        modes[name], pads[name] = pad_values(spatial, name, volume, context)
    params = []
    for op, d in zip(batch_ops, drawn):
        if d is None or op.kind == SPATIAL:
            params.append(None)
            continue
        params.append({name: {**d.params, **op.batch_params(d, name, context)} for name in d.names})
    applied += [d.step for d in drawn if d is not None]
    placeholders = {name: torch.zeros((volume.channels, 1, 1, 1), dtype=boxes[name].dtype)
                    for name, volume in volumes.items()}
    patch = cut_patch(subject, volumes, tuple(int(v) for v in start), tuple(int(v) for v in size), shape,
                      placeholders, applied)
    return BoxSample(patch, boxes, np.asarray(box_start, dtype=int), matrices, modes, pads, params)


class SubjectBoxes(SubjectPatches):
    """:class:`SubjectPatches` whose items are the subject's :class:`BoxSample` list.

    Args:
        subjects_dataset: The subjects.
        sampler: The TorchIO patch sampler.
        samples_per_volume: Patches per subject.
        plan: The split, with its batch steps (:func:`pyable_tio.plan_transform` with ``device``).
        engine: Resampling engine of the steps that stay per patch.
    """

    def patches(self, index: int, generator: torch.Generator | None = None) -> list[BoxSample]:
        items = super().patches(index, generator)
        steps = len(self.plan.batch_steps)
        return [item if isinstance(item, BoxSample) else BoxSample.of_patch(item, steps) for item in items]

    def _lazy_patches(self, subject: tio.Subject, num_patches: int, generator: torch.Generator | None,
                      steps: Sequence[Any] = ()) -> list[Any]:
        if not steps:  # nothing to augment (or 2-D subjects, transformed whole): plain patches
            return super()._lazy_patches(subject, num_patches, generator, steps)
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,)).item()))
        ops = list(steps)
        split = len(ops) - len(self.plan.batch_steps) if tuple(ops) == self.plan.patch_ops else batch_split(ops)
        volumes, _, patch_size, draw = self._volumes(subject, generator)
        return [box_sample(ops[:split], ops[split:], subject, volumes, tuple(int(i) for i in draw()),
                           tuple(patch_size), generator, self.engine) for _ in range(num_patches)]


class BoxQueue(PatchQueue):
    """A :class:`pyable_tio.PatchQueue` whose items are :class:`BoxSample` (for :func:`pyable_tio.patch_loader`).

    Same arguments; ``plan`` carries the batch steps (:func:`pyable_tio.plan_transform` with
    ``device``). Batches of its items are augmented by
    :class:`pyable_tio.patching.batch.BatchAugmenter`.

    Example:
        >>> queue = BoxQueue(dataset, 16, 4, tio.UniformSampler(32), plan=pt.plan_transform(T, 'cuda'))  # doctest: +SKIP
    """

    def __init__(self, subjects_dataset: tio.SubjectsDataset, max_length: int, samples_per_volume: int,
                 sampler: tio.data.PatchSampler, *args: Any, start_background: bool = True,
                 plan: TransformPlan | None = None, engine: str = PATCH_ENGINE_DEFAULT, threads: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(subjects_dataset, max_length, samples_per_volume, sampler, *args, start_background=False,
                         plan=plan, engine=engine, threads=threads, **kwargs)
        self._patches = SubjectBoxes(subjects_dataset, sampler, samples_per_volume, self._patches.plan, engine)
        if start_background:
            self._initialize_subjects_iterable()
