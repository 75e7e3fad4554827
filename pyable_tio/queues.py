"""TorchIO datasets and patch queues built straight from a manifest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torchio as tio
from torch.utils.data import RandomSampler, SequentialSampler

from .constants import (
    LABELMAP_PREFIX,
    MISSING_EMPTY,
    MISSING_ERROR,
    PATCH_ENGINE_DEFAULT,
    PATCH_ENGINES,
    ROI_PREFIX,
)
from .errors import ManifestError, describe
from .plan import reference_grid
from .manifest import ManifestSource, parse_manifest
from .patching.split import log_fallback, plan_transform
from .patching.boxes import BoxQueue
from .patching.queue import PatchQueue, warm_in_background
from .datasets.samplers import LabelSampler, WeightedSampler
from .subjects import SubjectOptions, subjects_from_manifest
from .transforms.layout import with_layout_guard
from .transforms.adapter import CallableTransform
from .transforms.spatial import RandomRotation90, Rotation90

SAMPLERS = ('uniform', 'label', 'weighted')

#: TorchIO transforms that may change a subject's spatial shape: with one of them in
#: ``transform=``, a subject smaller than the patch may still give whole patches.
#: Rotation90 and RandomRotation90 swap H and W of unequal in-plane shapes.
RESIZING_TRANSFORMS = (
    tio.CropOrPad, tio.Resize, tio.Resample, tio.Pad, tio.EnsureShapeMultiple, Rotation90, RandomRotation90,
)


def dataset_from_manifest(
    source: ManifestSource,
    transform: Callable | None = None,
    **kwargs: Any,
) -> tio.SubjectsDataset:
    """A ``tio.SubjectsDataset`` of the manifest's subjects.

    Args:
        source: Anything :func:`pyable_tio.read_manifest` accepts.
        transform: A TorchIO transform applied to each subject when it is loaded.
            It is followed by :class:`pyable_tio.transforms.ToZYX`: samples are always Z,Y,X
            (axis reorderings such as ``tio.ToCanonical`` are undone; a resampling onto a grid
            that is not a permutation of the subject's raises ``LayoutError``).
        **kwargs: Passed to :func:`pyable_tio.subjects_from_manifest`. Subjects may differ
            (``missing="keep"``, the default): each has the keys it lists. A
            ``tio.SubjectsLoader`` with ``batch_size > 1`` needs subjects that agree: pass
            ``missing="error"`` (checked here, before training) or ``missing="empty"``;
            otherwise the loader stops at the first subject without a key, with a
            ``KeyError`` naming the subject and the fix (:class:`pyable_tio.subjects.ManifestSubject`).

    Example:
        >>> dataset = dataset_from_manifest('manifest.json', transform=tio.RandomFlip())  # doctest: +SKIP
        >>> dataset[0]['images'].data.shape  # C x D x H x W  # doctest: +SKIP
    """
    # The guard (ToZYX) keeps samples Z,Y,X whatever the user's transform reordered.
    return tio.SubjectsDataset(subjects_from_manifest(source, **kwargs), transform=with_layout_guard(transform))


@dataclass(frozen=True)
class QueueOptions:
    """How :func:`queue_from_manifest` samples, orders and cuts patches (frozen, reusable).

    Each option is checked when the object is made, before any header is read.

    Args:
        sampler: ``"uniform"``, ``"label"`` (centres on ``label_name`` > 0), ``"weighted"``
            (``label_name`` is the probability map), or any ``tio.data.PatchSampler``.
        label_name: Subject key of the label map or ROI for the label/weighted samplers;
            defaults to the first label map, else the first ROI.
        num_workers: Workers loading subjects and cutting patches. They are the queue's:
            read the queue with ``tio.SubjectsLoader(queue, batch_size=..., num_workers=0)``
            (a loader with workers over the queue raises ``RuntimeError``).
        shuffle_subjects: Shuffle the subjects each epoch (ignored with ``subject_sampler``,
            which then sets the order).
        shuffle_patches: Shuffle the patches in the queue.
        subject_sampler: A ``torch.utils.data.Sampler`` over subjects (e.g. distributed).
        distributed: Shard the subjects over the ranks of the initialised
            ``torch.distributed`` process group with a ``DistributedSampler`` (shuffled with
            ``shuffle_subjects``); call :func:`set_epoch` at the start of every epoch.
        seed: Seed of the subject order: with ``distributed=True`` the ``DistributedSampler``'s
            (the same on every rank; default 0); otherwise, when given, a seeded
            ``RandomSampler`` (None: torch's global generator, as ``tio.Queue``).
        fast_patches: Return a :class:`pyable_tio.PatchQueue` (workers cut the patches and,
            when every step of ``transform`` runs per patch, read only the patch regions plus
            the augmentation's margin, e.g. from the cache's memory maps) instead of a
            ``tio.Queue``. ``None`` (default): when ``transform`` is None or all its steps run
            per patch (see :func:`pyable_tio.plan_transform`; the fallback to whole volumes is
            logged once, naming the step). ``True`` with a whole-volume prefix: the prefix runs
            in worker processes, the per-patch rest on each patch.
        missing: Patches of different subjects share batches, so subjects must agree:
            ``"error"`` refuses subjects with different numbers of ROIs/label maps (or image
            channels), naming them, before training starts; ``"empty"`` fills the missing
            ROIs/label maps with all-zero ones. None (default): the ``missing`` of the subject
            options passed (``options=SubjectOptions(missing="empty")``), else ``"error"``.
        engine: How a :class:`pyable_tio.PatchQueue` resamples augmented patches: ``"numba"``
            (default: all spatial steps of a patch in one compiled pass per image) or
            ``"sitk"`` (SimpleITK's ``Resample``, the oracle the kernels are tested against).
        batch_device: Used by :func:`pyable_tio.patch_loader`: the queue's items are then
            boxes with the drawn parameters of the steps that run on the batch on that device
            (:class:`pyable_tio.patching.boxes.BoxQueue`), not patches.

    Raises:
        ValueError: an unknown sampler, engine or ``missing`` mode.

    Example:
        >>> QueueOptions(sampler='label', missing='empty').missing
        'empty'
    """

    sampler: str | tio.data.PatchSampler = 'uniform'
    label_name: str | None = None
    num_workers: int = 0
    shuffle_subjects: bool = True
    shuffle_patches: bool = True
    subject_sampler: Any = None
    distributed: bool = False
    seed: int | None = None
    fast_patches: bool | None = None
    missing: str | None = None
    engine: str = PATCH_ENGINE_DEFAULT
    batch_device: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.sampler, tio.data.PatchSampler) and self.sampler not in SAMPLERS:
            raise ValueError(f'sampler must be one of {SAMPLERS} or a tio sampler, got {self.sampler!r}')
        if self.engine not in PATCH_ENGINES:
            raise ValueError(f'engine must be one of {PATCH_ENGINES}, got {self.engine!r}')
        if self.missing is not None and self.missing not in (MISSING_ERROR, MISSING_EMPTY):
            raise ValueError(f'a queue batches patches of different subjects: missing must be "{MISSING_ERROR}"'
                             f' or "{MISSING_EMPTY}", got {self.missing!r}')


_QUEUE_FIELDS = frozenset(f.name for f in fields(QueueOptions))


def queue_from_manifest(
    source: ManifestSource,
    *,
    patch_size: int | Sequence[int],
    samples_per_volume: int,
    max_length: int,
    transform: Callable | None = None,
    queue: QueueOptions | None = None,
    **changes: Any,
) -> tio.Queue:
    """A ``tio.Queue`` of patches from the manifest's subjects.

    Args:
        source: Anything :func:`pyable_tio.read_manifest` accepts.
        patch_size: Patch size in D,H,W (the tensors' Z,Y,X order); an int for cubes.
            2-D data take ``(1, H, W)``.
        samples_per_volume: Patches drawn from each loaded subject.
        max_length: Patches kept in the queue.
        transform: TorchIO transform applied to each subject before sampling, followed by
            :class:`pyable_tio.transforms.ToZYX` so patches are always Z,Y,X (D, H, W).
        queue: A :class:`QueueOptions` (sampler, label name, workers, shuffling, distributed,
            fast patches, missing, engine...; default: its defaults).
        **changes: Options by name over ``queue`` (``sampler="label"``, ``num_workers=4``...),
            the others are :func:`pyable_tio.subjects_from_manifest`'s (``cache_dir=``,
            ``options=SubjectOptions(...)``...).

    Raises:
        ManifestError: subjects that cannot share a batch, or a subject smaller than the
            patch (when no transform may resize it: ``tio.CropOrPad``, ``tio.Resize``,
            ``tio.Resample``, ``tio.Pad``, ``tio.EnsureShapeMultiple``, the 90-degree
            rotations, or a callable that is not a TorchIO transform).
        ValueError: an unknown sampler, a bad patch size or a label name that no subject has,
            before any header is read.

    Example:
        >>> queue = queue_from_manifest('m.json', patch_size=(32, 64, 64), samples_per_volume=8,
        ...                             max_length=64, sampler='label')  # doctest: +SKIP
        >>> batch = next(iter(tio.SubjectsLoader(queue, batch_size=4)))  # doctest: +SKIP
        >>> batch['images'][tio.DATA].shape  # B x C x D x H x W  # doctest: +SKIP
    """
    # Options first: a typo here must not wait for thousands of headers.
    patch = _patch_size(patch_size)
    unknown = sorted(set(changes) - _QUEUE_FIELDS - {f.name for f in fields(SubjectOptions)} - {'options'})
    if unknown:
        raise TypeError(f'unknown option(s) {unknown}; the queue options are: {", ".join(sorted(_QUEUE_FIELDS))};'
                        f' the subject options: {", ".join(f.name for f in fields(SubjectOptions))}')
    own = {name: changes.pop(name) for name in list(changes) if name in _QUEUE_FIELDS}
    options = replace(queue or QueueOptions(), **own)
    kwargs = changes  # the subjects' options
    sampler, label_name, missing = options.sampler, options.label_name, _queue_missing(options, kwargs)
    shuffle_subjects, subject_sampler = options.shuffle_subjects, options.subject_sampler
    distributed, seed, fast_patches = options.distributed, options.seed, options.fast_patches
    engine, batch_device = options.engine, options.batch_device
    if label_name is not None and not isinstance(sampler, tio.data.PatchSampler) and sampler != 'uniform':
        # From the manifest alone (no header); its problems are reported with the others below.
        parsed, _, _ = parse_manifest(source, root=kwargs.get('root'), extra_fields=kwargs.get('extra_fields', ()))
        _check_label_name(label_name, parsed, missing)
        source = parsed  # parsed once: it carries its problems on to the planning
    guarded = with_layout_guard(transform)  # patches stay Z,Y,X
    plan = plan_transform(guarded, batch_device)  # planned once, here; the queue is handed the split
    if engine == 'numba' and batch_device is None and plan.resamples and fast_patches is not False:
        warm_in_background()  # numba's first call overlaps the header reads
    subjects = subjects_from_manifest(source, missing=missing, **kwargs)
    if may_resize(transform) is False:
        _check_patch_fits(subjects, patch)
    dataset = tio.SubjectsDataset(subjects, transform=guarded)
    patch_sampler = make_sampler(sampler, patch, label_name, subjects[0])
    if distributed:
        subject_sampler = _distributed_sampler(dataset, subject_sampler, shuffle_subjects, seed or 0)
    elif seed is not None and subject_sampler is None and shuffle_subjects:
        subject_sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    # Steps that all run per patch read only the patch boxes, in threads (PatchQueue). A whole-volume
    # prefix keeps tio.Queue unless fast_patches=True (then: prefix in worker processes, rest per patch).
    fast = (transform is None or plan.per_patch) if fast_patches is None else fast_patches
    if transform is not None:
        log_fallback(plan)
    if batch_device is not None:
        fast, queue_class = True, BoxQueue
    else:
        queue_class = PatchQueue if fast else tio.Queue
    extra = {'plan': plan, 'engine': engine} if fast else {}
    return queue_class(
        dataset,
        max_length=max_length,
        samples_per_volume=samples_per_volume,
        sampler=patch_sampler,
        num_workers=options.num_workers,
        # tio.Queue refuses both; a subject sampler (e.g. distributed) shuffles on its own.
        shuffle_subjects=shuffle_subjects and subject_sampler is None,
        shuffle_patches=options.shuffle_patches,
        subject_sampler=subject_sampler,
        **extra,
    )


def _queue_missing(options: QueueOptions, changes: dict[str, Any]) -> str:
    """The queue's ``missing``, else the subject options' when a batch can take it, else ``"error"``."""
    if options.missing is not None:
        return options.missing
    subject = getattr(changes.get('options'), 'missing', None)
    return subject if subject in (MISSING_ERROR, MISSING_EMPTY) else MISSING_ERROR


def set_epoch(queue: tio.Queue, epoch: int) -> None:
    """Tell the queue's distributed subject sampler which epoch starts (same value on every rank).

    ``DistributedSampler`` shuffles with ``seed + epoch``: without this call every epoch
    visits the subjects in the same order. The queue asks its subject sampler for a new
    order when it starts its next pass over the subjects, i.e. right after this call.

    Args:
        queue: A queue from :func:`queue_from_manifest` (``distributed=True``) or any
            ``tio.Queue`` whose ``subject_sampler`` has ``set_epoch``.
        epoch: The epoch about to start.

    Raises:
        ValueError: the queue's subject sampler has no ``set_epoch``.

    Example:
        >>> for epoch in range(num_epochs):  # doctest: +SKIP
        ...     set_epoch(queue, epoch)
        ...     for batch in tio.SubjectsLoader(queue, batch_size=4): ...
    """
    subject_sampler = getattr(queue, 'subject_sampler', None)
    if not hasattr(subject_sampler, 'set_epoch'):
        raise ValueError('set_epoch needs a queue built with distributed=True (its subject sampler has no set_epoch)')
    subject_sampler.set_epoch(epoch)


class QueueSampler(SequentialSampler):
    """The sampler of a ``tio.SubjectsLoader`` over a queue whose ``set_epoch`` reaches the queue.

    Reads the queue's patches in order (the queue shuffles them itself) and forwards
    ``set_epoch`` to :func:`set_epoch`, so code that calls ``loader.sampler.set_epoch(epoch)``
    each epoch, as PyTorch Lightning does, reshuffles the distributed subjects.

    Args:
        queue: A queue from :func:`queue_from_manifest` (``set_epoch`` does nothing unless
            it was built with ``distributed=True``).

    Example:
        >>> loader = tio.SubjectsLoader(queue, batch_size=4, sampler=QueueSampler(queue))  # doctest: +SKIP
        >>> loader.sampler.set_epoch(1)  # doctest: +SKIP
    """

    def __init__(self, queue: tio.Queue):
        super().__init__(queue)
        self.queue = queue

    def set_epoch(self, epoch: int) -> None:
        """Forward ``epoch`` to :func:`set_epoch` (no-op when the queue is not distributed)."""
        # No-op without a distributed sampler, so one loader serves single- and multi-GPU runs.
        if hasattr(getattr(self.queue, 'subject_sampler', None), 'set_epoch'):
            set_epoch(self.queue, epoch)


def _distributed_sampler(dataset: tio.SubjectsDataset, subject_sampler: Any, shuffle: bool, seed: int) -> Any:
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    if subject_sampler is not None:
        raise ValueError('pass either distributed=True or subject_sampler, not both')
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            'distributed=True needs an initialised process group: call'
            ' torch.distributed.init_process_group(...) in each process first'
        )
    return DistributedSampler(dataset, shuffle=shuffle, seed=seed)


def make_sampler(
    sampler: str | tio.data.PatchSampler,
    patch_size: tuple[int, int, int],
    label_name: str | None,
    subject: tio.Subject,
) -> tio.data.PatchSampler:
    """The TorchIO patch sampler named by ``sampler``.

    Args:
        sampler: ``"uniform"``, ``"label"``, ``"weighted"`` or a ``tio.data.PatchSampler``
            (returned as is).
        patch_size: D, H, W.
        label_name: Subject key of the label map (label) or probability map (weighted);
            None picks the first ``labelmap_i``, else the first ROI.
        subject: A subject of the dataset, to check ``label_name`` against.

    Returns:
        The sampler.

    Raises:
        ValueError: An unknown sampler name, or no such label map.

    Example:
        >>> make_sampler('label', (16, 32, 32), None, subjects[0]).label_name  # doctest: +SKIP
        'labelmap_0'
    """
    if isinstance(sampler, tio.data.PatchSampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f'sampler must be one of {SAMPLERS} or a tio sampler, got {sampler!r}')
    if sampler == 'uniform':
        return tio.UniformSampler(patch_size)
    label_maps = [k for k, v in subject.get_images_dict(intensity_only=False).items() if isinstance(v, tio.LabelMap)]
    if label_name is None:
        preferred = sorted(label_maps, key=lambda k: (not k.startswith(LABELMAP_PREFIX), k))
        if not preferred:
            raise ValueError(f'sampler "{sampler}" needs a label map or ROI, and the subjects have none')
        label_name = preferred[0]
    if label_name not in subject:
        raise ValueError(f'label_name "{label_name}" is not a subject key; keys are {sorted(label_maps)}')
    # Subclasses whose "empty probability map" error names the subject and the file.
    if sampler == 'label':
        return LabelSampler(patch_size, label_name=label_name)
    return WeightedSampler(patch_size, probability_map=label_name)


def _patch_size(patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(patch_size, bool):
        raise ValueError(f'patch_size must be an int or 3 positive ints (D, H, W), got {patch_size!r}')
    if isinstance(patch_size, int):
        if patch_size < 1:
            raise ValueError(f'patch_size must be an int or 3 positive ints (D, H, W), got {patch_size!r}')
        return (patch_size,) * 3
    try:
        patch = tuple(int(n) for n in patch_size)
    except (TypeError, ValueError):
        patch = ()
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f'patch_size must be an int or 3 positive ints (D, H, W), got {patch_size!r}')
    return patch


#: TorchIO transforms around arbitrary code: whether they resize is unknown.
_OPAQUE_TRANSFORMS = tuple(
    cls for cls in (getattr(tio, 'Lambda', None), getattr(tio, 'MonaiAdapter', None), CallableTransform) if cls
)


def may_resize(transform: Callable | None) -> bool | None:
    """Whether ``transform`` may change a subject's spatial shape: False, True, or None (unknown).

    A ``tio.Compose``/``tio.OneOf`` (and pyable-tio's ``Compose``) is looked into; a TorchIO
    transform resizes only if it is one of :data:`RESIZING_TRANSFORMS`; ``tio.Lambda``,
    ``tio.MonaiAdapter``, ``transforms.CallableTransform`` and any other callable are unknown
    (they may crop or pad).

    Example:
        >>> may_resize(tio.Compose([tio.RandomFlip(), tio.CropOrPad(32)])), may_resize(tio.RandomFlip())
        (True, False)
    """
    if transform is None:
        return False
    if isinstance(transform, RESIZING_TRANSFORMS):
        return True
    children = getattr(transform, 'transforms', None)
    if children is None:
        children = getattr(transform, 'transforms_dict', None)  # tio.OneOf: {transform: probability}
    if isinstance(children, dict):
        children = list(children)
    if isinstance(transform, tio.Transform) and children is not None:
        answers = [may_resize(child) for child in children]
        return True if True in answers else (None if None in answers else False)
    if isinstance(transform, _OPAQUE_TRANSFORMS):
        return None  # wraps a function (or MONAI transform) that may crop or pad
    return False if isinstance(transform, tio.Transform) else None


def _check_label_name(label_name: str, manifest: Any, missing: str) -> None:
    """``label_name`` must be a ROI or label map key every subject has (from the manifest alone)."""
    counts = {
        prefix: [len(getattr(record, field)) for record in manifest]
        for prefix, field in ((LABELMAP_PREFIX, 'labelmaps'), (ROI_PREFIX, 'rois'))
    }
    pick = max if missing == MISSING_EMPTY else min
    keys = [f'{prefix}{i}' for prefix, numbers in counts.items() for i in range(pick(numbers, default=0))]
    if label_name not in keys:
        raise ValueError(f'label_name must be a label map or ROI key of every subject, one of {keys}; got {label_name!r}')


def _check_patch_fits(subjects: Sequence[tio.Subject], patch: tuple[int, int, int]) -> None:
    problems = []
    for subject in subjects:
        shape = tuple(int(n) for n in reference_grid(subject).shape_zyx)
        if any(p > s for p, s in zip(patch, shape)):
            problem = (
                f'grid shape (D, H, W) {shape} is smaller than patch_size {patch};'
                ' use a smaller patch or a transform that resizes (e.g. tio.CropOrPad)'
            )
            problems.append(describe(subject['id'], 'patch_size', problem))
    if problems:
        raise ManifestError.from_problems(problems)
