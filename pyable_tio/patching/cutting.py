"""Cutting patches from the readers' arrays: the patch location first, then only its region.

:class:`SubjectPatches` is the dataset a :class:`pyable_tio.PatchQueue` iterates: item ``i``
is the list of patches of subject ``i``. With a ``tio.UniformSampler``, ``tio.WeightedSampler``
or ``tio.LabelSampler`` it draws each patch location as TorchIO's sampler would, then asks each
image's reader for its array (a memory map when the volume cache is on) and copies only the
patch region; the probability map of a weighted/label sampler is the only volume read whole.
With a transform whose steps are patch-local (:func:`pyable_tio.plan_transform`), it reads
the patch's box plus the margin the drawn augmentation needs and augments that box only
(:mod:`pyable_tio.patching.augment`, with the numba or SimpleITK engine); a volume-level prefix of the transform runs on the loaded
subject first. Any other sampler or transform loads the subject as ``tio.Queue`` does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchio as tio
from torch.utils.data import Dataset
from torchio.constants import LOCATION, MIN_FLOAT_32, NUM_SAMPLES
from torchio.data.sampler.label import LabelSampler
from torchio.data.sampler.uniform import UniformSampler
from torchio.data.sampler.weighted import WeightedSampler

from ..constants import ID, PATCH_ENGINE_DEFAULT, PATCH_ENGINES
from ..checking.labels import EMPTY_MAP_ERROR, empty_map_message
from .augment import augment_patch
from .split import TransformPlan, plan_transform
from .volume import Volume
from ..plan import plan_of

# Samplers whose patch locations need only the spatial shape or the probability map.
_LAZY_GENERATORS = (UniformSampler._generate_patches, WeightedSampler._generate_patches)


class SubjectPatches(Dataset):
    """Map-style dataset: item ``i`` is the list of patches drawn from subject ``i``.

    Args:
        subjects_dataset: The subjects (unloaded; their readers are called here).
        sampler: The TorchIO patch sampler.
        samples_per_volume: Patches per subject, unless the subject has a ``num_samples``
            attribute (as in ``tio.Queue``).
        plan: The split of the dataset's transform (:func:`pyable_tio.plan_transform`);
            None: planned here from the dataset's transform.
        engine: Resampling engine of augmented patches: ``"numba"`` (compiled kernels) or
            ``"sitk"`` (SimpleITK, the oracle).

    Example:
        >>> patches = SubjectPatches(tio.SubjectsDataset(subjects), tio.UniformSampler(32), 4)  # doctest: +SKIP
        >>> [p[tio.LOCATION] for p in patches[0]]  # D0, H0, W0, D1, H1, W1  # doctest: +SKIP
    """

    def __init__(self, subjects_dataset: tio.SubjectsDataset, sampler: tio.data.PatchSampler,
                 samples_per_volume: int, plan: TransformPlan | None = None,
                 engine: str = PATCH_ENGINE_DEFAULT) -> None:
        if engine not in PATCH_ENGINES:
            raise ValueError(f'engine must be one of {PATCH_ENGINES}, got {engine!r}')
        self.subjects_dataset = subjects_dataset
        self.sampler = sampler
        self.samples_per_volume = samples_per_volume
        self.engine = engine
        self.plan: TransformPlan = plan_transform(self._transform()) if plan is None else plan

    def __len__(self) -> int:
        return len(self.subjects_dataset)

    def __getitem__(self, index: int) -> list[tio.Subject]:
        return self.patches(index)

    def patches(self, index: int, generator: torch.Generator | None = None) -> list[tio.Subject]:
        """The patches of subject ``index``.

        Args:
            index: Subject index.
            generator: Random generator of the patch locations and augmentations when read
                lazily (threads draw from their own); None: the global one (drawn exactly as
                TorchIO draws, without augmentation; augmentation then draws a generator
                from it).
        """
        try:
            return self._subject_patches(index, generator)
        except RuntimeError as error:
            if EMPTY_MAP_ERROR not in str(error):
                raise
            # TorchIO's message names no subject (its map is a one-image copy here).
            subject = self.subjects_dataset.dry_iter()[int(index)]
            raise RuntimeError(empty_map_message(subject, self.sampler)) from None

    def _subject_patches(self, index: int, generator: torch.Generator | None) -> list[tio.Subject]:
        subject = self.subjects_dataset.dry_iter()[int(index)]
        num_patches = getattr(subject, NUM_SAMPLES, self.samples_per_volume)
        if not self.sampler_is_lazy() or (self.plan.volume_steps and not self.plan.patch_steps):
            return list(self.sampler(self.subjects_dataset[int(index)], num_patches))
        if self.plan.patch_steps and generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,)).item()))
        volume_steps, patch_steps = self.plan.volume_steps, self.plan.patch_ops
        if patch_steps and _is_planar(subject):
            # 2-D subjects: the whole guarded transform, with its in-plane (TorchIO 2-D) conventions.
            volume_steps, patch_steps = (self._transform(),), ()
        if volume_steps:
            # The whole-volume prefix runs on the loaded subject, as TorchIO runs it.
            subject = copy.deepcopy(subject)
            subject.load()
            subject = tio.Compose(list(volume_steps))(subject)
        return self._lazy_patches(subject, num_patches, generator, patch_steps)

    def sampler_is_lazy(self) -> bool:
        """True when the sampler's locations can be drawn without loading the subject."""
        generator = getattr(type(self.sampler)._generate_patches, '__func__', type(self.sampler)._generate_patches)
        return isinstance(self.sampler, (UniformSampler, WeightedSampler)) and generator in _LAZY_GENERATORS

    def reads_lazily(self) -> bool:
        """True when patches are cut (and augmented) from the readers' arrays without loading subjects."""
        lazy_transform = self._transform() is None or self.plan.per_patch
        return lazy_transform and getattr(self.subjects_dataset, 'load_getitem', True) and self.sampler_is_lazy()

    def _transform(self) -> Any:
        """The dataset's transform (a ``tio.SubjectsDataset`` keeps it private)."""
        return getattr(self.subjects_dataset, '_transform', None)

    def _lazy_patches(self, subject: tio.Subject, num_patches: int, generator: torch.Generator | None,
                      steps: Sequence[tio.Transform] = ()) -> list[tio.Subject]:
        volumes, shape, patch_size, draw = self._volumes(subject, generator)
        patches = []
        for _ in range(num_patches):
            start = tuple(int(i) for i in draw())
            tensors, applied = None, ()
            if steps:
                tensors, applied = augment_patch(steps, subject, volumes, start, tuple(patch_size), generator,
                                                 self.engine)
            elif generator is None:
                # tio.Crop.__call__ draws one number per patch: keep the random stream TorchIO's,
                # so that a seed gives the patches tio.Queue would give.
                torch.rand(1)
            patches.append(cut_patch(subject, volumes, start, tuple(patch_size), shape, tensors, applied))
        return patches

    def _volumes(self, subject: tio.Subject, generator: torch.Generator | None) -> tuple[dict[str, Volume], np.ndarray,
                                                                                         np.ndarray, Any]:
        """The subject's volumes (checked: one grid, the patch fits), their shape (D, H, W), the
        patch size and the location drawer."""
        volumes = {name: Volume.of(image) for name, image in subject.get_images_dict(intensity_only=False).items()}
        shapes = {v.shape for v in volumes.values()}
        subject_id = subject.get(ID, '')
        if len(shapes) != 1:
            raise RuntimeError(f'images of subject {subject_id!r} have different spatial'
                               f' shapes {sorted(shapes)}; they must share one grid to be cut into patches')
        shape = np.array(shapes.pop())
        patch_size = self.sampler.patch_size.astype(int)
        if np.any(patch_size > shape):
            raise RuntimeError(f'subject {subject_id!r}: Patch size {tuple(patch_size)} cannot be larger'
                               f' than image size {tuple(shape)}')
        return volumes, shape, patch_size, self._location_drawer(subject, volumes, shape, generator)

    def _location_drawer(self, subject: tio.Subject, volumes: dict, shape: np.ndarray,
                         generator: torch.Generator | None):
        """A function drawing one patch start (D, H, W) as the TorchIO sampler would."""
        sampler = self.sampler
        if isinstance(sampler, WeightedSampler):
            # TorchIO's own probability map and inverse-CDF sampling, on a one-image subject.
            image = sampler.get_probability_map_image(subject)  # TorchIO's choice and errors; not loaded
            name = next(key for key, value in subject.items() if value is image)
            half = sampler.patch_size.astype(int) // 2
            if generator is not None and isinstance(sampler, LabelSampler) and not sampler.label_probabilities_dict:
                return _binary_label_drawer(sampler, volumes[name].read(), half, generator, image.path)
            one = tio.Subject({name: type(image)(tensor=volumes[name].read(), affine=volumes[name].affine)})
            probability = sampler.process_probability_map(sampler.get_probability_map(one), one)
            cdf = sampler.get_cumulative_distribution_function(probability)
            if generator is None:
                return lambda: sampler.get_random_index_ini(probability, cdf)

            def weighted() -> np.ndarray:  # WeightedSampler.sample_probability_map, own generator
                number = max(MIN_FLOAT_32, torch.rand(1, generator=generator).item()) * cdf[-1]
                return np.array(np.unravel_index(np.searchsorted(cdf, number), probability.shape)) - half

            return weighted
        valid_range = shape - sampler.patch_size.astype(int)
        return lambda: [int(torch.randint(x + 1, (1,), generator=generator).item()) for x in valid_range]


def _is_planar(subject: tio.Subject) -> bool:
    """True when the subject's reference grid (its plan's; its readers' for a subject built by hand) is 2-D."""
    plan = plan_of(subject)
    if plan is not None:
        return plan.grid.dimension == 2
    grids = [getattr(getattr(image, 'reader', None), 'grid', None) for image in subject.get_images(intensity_only=False)]
    return any(getattr(grid, 'dimension', 3) == 2 for grid in grids)


def _binary_label_drawer(sampler: LabelSampler, label: torch.Tensor, half: np.ndarray,
                         generator: torch.Generator, path: Any):
    """``tio.LabelSampler`` without label probabilities: a centre drawn uniformly among the voxels
    of the first channel > 0 away from the borders, the distribution TorchIO's inverse CDF over
    that binary map gives, without its float64 map and cumulative sum (~10x faster)."""
    mask = (label[0] > 0).numpy()
    WeightedSampler.clear_probability_borders(mask, sampler.patch_size)
    candidates = np.flatnonzero(mask)
    if not candidates.size:
        raise RuntimeError(f'Empty probability map found: {path}; voxels with positive probability might be'
                           f' near the image border: try tio.Pad({tuple(int(n) for n in half)})')

    def draw() -> np.ndarray:
        index = candidates[int(torch.randint(candidates.size, (1,), generator=generator).item())]
        return np.array(np.unravel_index(index, mask.shape)) - half

    return draw


def cut_patch(subject: tio.Subject, volumes: dict[str, Volume], start: tuple, size: tuple, shape,
              tensors: dict[str, torch.Tensor] | None = None, applied: Sequence[tio.Transform] = ()) -> tio.Subject:
    """The patch at ``start``, built as ``tio.Crop`` builds it from a loaded subject.

    Args:
        subject: The subject the patch comes from.
        volumes: Its images' volumes, by name.
        start: Patch start (D, H, W).
        size: Patch size (D, H, W).
        shape: The volumes' spatial shape (D, H, W).
        tensors: The patch's data per image (e.g. augmented); None: cropped from ``volumes``.
        applied: Steps applied to ``tensors``, recorded in the history before the crop (as
            ``tio.Queue``'s patches carry the transform, then the crop).

    Example:
        >>> patch = cut_patch(subject, volumes, (0, 4, 4), (8, 8, 8), (12, 18, 20))  # doctest: +SKIP
    """
    stop = tuple(a + n for a, n in zip(start, size))
    patch = subject.__class__.__new__(subject.__class__)
    for key, value in subject.__dict__.items():
        if key in volumes:
            volume = volumes[key]
            affine = volume.affine_at(start)
            data = volume.crop(start, stop) if tensors is None else tensors[key]
            patch[key] = type(value)(tensor=data, affine=affine, type=value.type, path=value.path)
        else:
            copied = copy.deepcopy(value)
            if key in subject:
                patch[key] = copied
            patch.__dict__[str(key)] = copied
    cropping = tuple(int(v) for a, b, n in zip(start, stop, shape) for v in (a, n - b))
    for step in applied:
        step._add_transform_to_subject_history(patch)
    tio.Crop(cropping)._add_transform_to_subject_history(patch)
    patch[LOCATION] = torch.as_tensor([*start, *stop])
    patch.update_attributes()
    return patch


