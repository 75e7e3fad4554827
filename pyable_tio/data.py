"""TorchIO datasets and patch queues built straight from a manifest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torchio as tio

from .constants import META
from .errors import ManifestError, describe
from .manifest import ManifestSource
from .subjects import subjects_from_manifest

SAMPLERS = ('uniform', 'label', 'weighted')


def dataset_from_manifest(
    source: ManifestSource,
    transform: Callable | None = None,
    **kwargs: Any,
) -> tio.SubjectsDataset:
    """A ``tio.SubjectsDataset`` of the manifest's subjects.

    Args:
        source: Anything :func:`pyable_tio.read_manifest` accepts.
        transform: A TorchIO transform applied to each subject when it is loaded.
        **kwargs: Passed to :func:`pyable_tio.subjects_from_manifest`.

    Example:
        >>> dataset = dataset_from_manifest('manifest.json', transform=tio.RandomFlip())  # doctest: +SKIP
        >>> dataset[0]['images'].data.shape  # C x D x H x W  # doctest: +SKIP
    """
    return tio.SubjectsDataset(subjects_from_manifest(source, **kwargs), transform=transform)


def queue_from_manifest(
    source: ManifestSource,
    *,
    patch_size: int | Sequence[int],
    samples_per_volume: int,
    max_length: int,
    sampler: str | tio.data.PatchSampler = 'uniform',
    label_name: str | None = None,
    num_workers: int = 0,
    transform: Callable | None = None,
    shuffle_subjects: bool = True,
    shuffle_patches: bool = True,
    subject_sampler: Any = None,
    **kwargs: Any,
) -> tio.Queue:
    """A ``tio.Queue`` of patches from the manifest's subjects.

    Args:
        source: Anything :func:`pyable_tio.read_manifest` accepts.
        patch_size: Patch size in D,H,W (the tensors' Z,Y,X order); an int for cubes.
            2-D data take ``(1, H, W)``.
        samples_per_volume: Patches drawn from each loaded subject.
        max_length: Patches kept in the queue.
        sampler: ``"uniform"``, ``"label"`` (centres on ``label_name`` > 0), ``"weighted"``
            (``label_name`` is the probability map), or any ``tio.data.PatchSampler``.
        label_name: Subject key of the label map or ROI for the label/weighted samplers;
            defaults to the first label map, else the first ROI.
        num_workers: Worker processes loading subjects.
        transform: TorchIO transform applied to each subject before sampling.
        shuffle_subjects: Shuffle the subjects each epoch (ignored with ``subject_sampler``,
            which then sets the order).
        shuffle_patches: Shuffle the patches in the queue.
        subject_sampler: A ``torch.utils.data.Sampler`` over subjects (e.g. distributed).
        **kwargs: Passed to :func:`pyable_tio.subjects_from_manifest`.

    Raises:
        ManifestError: a subject smaller than the patch (when no transform may resize it).
        ValueError: an unknown sampler, or a label sampler without a label map.

    Example:
        >>> queue = queue_from_manifest('m.json', patch_size=(32, 64, 64), samples_per_volume=8,
        ...                             max_length=64, sampler='label')  # doctest: +SKIP
        >>> batch = next(iter(tio.SubjectsLoader(queue, batch_size=4)))  # doctest: +SKIP
        >>> batch['images'][tio.DATA].shape  # B x C x D x H x W  # doctest: +SKIP
    """
    subjects = subjects_from_manifest(source, **kwargs)
    patch = _patch_size(patch_size)
    if transform is None:
        _check_patch_fits(subjects, patch)
    dataset = tio.SubjectsDataset(subjects, transform=transform)
    patch_sampler = make_sampler(sampler, patch, label_name, subjects[0])
    return tio.Queue(
        dataset,
        max_length=max_length,
        samples_per_volume=samples_per_volume,
        sampler=patch_sampler,
        num_workers=num_workers,
        # tio.Queue refuses both; a subject sampler (e.g. distributed) shuffles on its own.
        shuffle_subjects=shuffle_subjects and subject_sampler is None,
        shuffle_patches=shuffle_patches,
        subject_sampler=subject_sampler,
    )


def make_sampler(
    sampler: str | tio.data.PatchSampler,
    patch_size: tuple[int, int, int],
    label_name: str | None,
    subject: tio.Subject,
) -> tio.data.PatchSampler:
    """The TorchIO patch sampler named by ``sampler``."""
    if isinstance(sampler, tio.data.PatchSampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f'sampler must be one of {SAMPLERS} or a tio sampler, got {sampler!r}')
    if sampler == 'uniform':
        return tio.UniformSampler(patch_size)
    label_maps = [k for k, v in subject.get_images_dict(intensity_only=False).items() if isinstance(v, tio.LabelMap)]
    if label_name is None:
        preferred = sorted(label_maps, key=lambda k: (not k.startswith('labelmap_'), k))
        if not preferred:
            raise ValueError(f'sampler "{sampler}" needs a label map or ROI, and the subjects have none')
        label_name = preferred[0]
    if label_name not in subject:
        raise ValueError(f'label_name "{label_name}" is not a subject key; keys are {sorted(label_maps)}')
    if sampler == 'label':
        return tio.LabelSampler(patch_size, label_name=label_name)
    return tio.WeightedSampler(patch_size, probability_map=label_name)


def _patch_size(patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(patch_size, int):
        return (patch_size,) * 3
    patch = tuple(int(n) for n in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f'patch_size must be an int or 3 positive ints (D, H, W), got {patch_size!r}')
    return patch


def _check_patch_fits(subjects: Sequence[tio.Subject], patch: tuple[int, int, int]) -> None:
    problems = []
    for subject in subjects:
        size_xyz = subject[META]['size']
        shape = (size_xyz[2] if len(size_xyz) == 3 else 1, size_xyz[1], size_xyz[0])
        if any(p > s for p, s in zip(patch, shape)):
            problem = f'grid shape (D, H, W) {shape} is smaller than patch_size {patch}'
            problems.append(describe(subject['id'], 'patch_size', problem))
    if problems:
        raise ManifestError.from_problems(problems)
