"""The subject plan: what each file of a subject becomes, as data that travels with the subject.

A :class:`SubjectPlan` is made once per subject by :func:`make_plan`, from the subject
checked against its headers (:mod:`pyable_tio.checking.headers`) and the validated read options.
It holds the reference grid (x,y,z order, SimpleITK's) and, per file, a :class:`PlanEntry`:
its subject key, role, source, its own transform chain as data (file's, then subject's,
then the ``align=`` result, nearest the grid), its interpolation and its preprocessing.

Everything downstream reads it and nothing else: each ``GridReader`` holds its entries,
the cache key is built from an entry and the grid, ``subject['meta']`` is written from it
(:meth:`SubjectPlan.meta`), and :func:`pyable_tio.to_native` finds the way back to a file's
native grid from it, whatever a transform did to the subject's ``tio.Image`` objects. It
rides on the subject as an attribute (:func:`plan_of`), so ``copy.deepcopy``, pickling
(DataLoader workers), TorchIO transforms and queues keep it, and batches never see it.

Example:
    >>> subject = pt.subjects_from_manifest('manifest.json')[0]  # doctest: +SKIP
    >>> plan = plan_of(subject)  # doctest: +SKIP
    >>> [entry.key for entry in plan.entries], plan.grid.shape_zyx  # doctest: +SKIP
    (['images', 'images', 'roi_0', 'labelmap_0'], (48, 64, 64))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache.digest import file_digest
from .constants import (
    BRAIN_MASK,
    BRAIN_MASK_KEY,
    CACHE_FORMAT_VERSION,
    CACHE_KEY_VERSION,
    DEFAULT_BACKGROUND,
    DEFAULT_NONFINITE,
    FIELD_IMAGES,
    FIELD_LABELMAPS,
    FIELD_ROIS,
    IMAGE_PREFIX,
    IMAGES,
    LABELMAP_PREFIX,
    LINEAR,
    META,
    PLAN_ATTRIBUTE,
    PREPROCESS_IMAGE,
    ROI_PREFIX,
)
from .geometry.grid import Grid, grid_from_meta
from .geometry.registration import entries_digest, transform_files
from .io import backend
from .manifest.records import TransformEntry
from .preprocess import Preprocessing
from .preprocess.selection import brain_source, file_steps, preprocessing_for

#: Reader roles (the values of :mod:`pyable_tio.io.backend`'s ``ROLE_*``), by manifest field.
FIELD_ROLES = {FIELD_IMAGES: 'image', FIELD_ROIS: 'roi', FIELD_LABELMAPS: 'labelmap'}


@dataclass(frozen=True)
class PlanEntry:
    """One file of a subject, as its reader loads it onto the subject's grid.

    Args:
        key: The subject key of the ``tio.Image`` holding it (``"images"``, ``"image_1"``,
            ``"roi_0"``, ``"labelmap_0"``, ``"roi_brain"``); stacked images share one key.
        field: The manifest field listing it (``"images"``, ``"rois"``, ``"labelmaps"``).
        index: Its position in that field (a stacked image's channel file).
        role: ``"image"``, ``"roi"`` or ``"labelmap"`` (ROIs and label maps: nearest-neighbour).
        source: The file, or a DICOM series (a folder, or ``folder#UID``).
        transforms: Its transform chain, applied in order (ITK: grid point -> file point).
        interpolator: Image interpolator (labels are always nearest-neighbour).
        dtype: NumPy dtype name of an image's array (labels keep their pixel type).
        default_value: Value outside the file's field of view.
        nonfinite: NaN/+-Inf policy (``"error"``, ``"zero"``, ``"keep"``).
        preprocessing: Steps run on the file in its native space first, or None.
        filler: An all-zero label map filling a missing ROI/label map (``missing="empty"``);
            ``source`` is then the subject's first image, never read.
        name: Its manifest name (a multi-CSV ``sequence``...), ``""`` when unnamed.

    Example:
        >>> entry = PlanEntry('roi_0', 'rois', 0, 'roi', Path('/data/roi.nii.gz'))
        >>> entry.key, entry.transforms
        ('roi_0', ())
    """

    key: str
    field: str
    index: int
    role: str
    source: Path
    transforms: tuple[TransformEntry, ...] = ()
    interpolator: str = LINEAR
    dtype: str = 'float32'
    default_value: float = DEFAULT_BACKGROUND
    nonfinite: str = DEFAULT_NONFINITE
    preprocessing: Preprocessing | None = None
    filler: bool = False
    name: str = ''

    def files(self) -> tuple[str, ...]:
        """The files its volume is read from: the source, transform files and preprocessing masks.

        Example:
            >>> PlanEntry('roi_0', 'rois', 0, 'roi', Path('/data/roi.nii.gz')).files()
            ('/data/roi.nii.gz',)
        """
        files = [str(self.source)]
        files += transform_files(self.transforms)
        if self.preprocessing is not None:
            files += list(self.preprocessing.files(self.source)[1:])
        return tuple(files)

    def cache_inputs(self, grid: Grid, digest: Callable[[Path], str] = file_digest) -> dict[str, Any]:
        """Everything its volume on ``grid`` depends on, as a JSON-serialisable dict: the cache key.

        Built from data only (the entry and the grid), never from a reader; its SHA-256
        (:func:`~pyable_tio.cache.digest.digest_of`) names the volume in the cache.

        Args:
            grid: The grid it is resampled onto.
            digest: The content digest of a file (a cache's ``source_digest``: memoised on disk).

        Returns:
            Format and key versions, backend, source and transforms digests, grid (x,y,z order),
            role, interpolator, dtype, default value, non-finite policy and the preprocessing.

        Raises:
            OSError: the source, a transform or a preprocessing mask file cannot be read.

        Example:
            >>> reader.entry('t2.nii.gz').cache_inputs(reader.grid)['interpolator']  # doctest: +SKIP
            'linear'
        """
        is_image = self.role == backend.ROLE_IMAGE
        inputs = {
            'format': CACHE_FORMAT_VERSION,
            # Same files and transforms, another meaning (e.g. the list order): another key.
            'key_version': CACHE_KEY_VERSION,
            'backend': backend.active_backend(),
            'source': digest(self.source),
            'transforms': entries_digest(self.transforms, digest),
            # + 0.0 turns -0.0 (common in direction cosines) into 0.0: same grid, same key.
            'grid': {name: [v + 0.0 for v in values] for name, values in grid.to_dict().items()},
            'role': self.role,
            # Labels are nearest-neighbour in their own type whatever the image options say.
            'interpolator': backend.interpolator_for(self.role, self.interpolator),
            'dtype': str(np.dtype(self.dtype)) if is_image else 'native',
            'default_value': float(self.default_value),
            # "zero" and "keep" give different arrays from one file with NaN/Inf voxels.
            'nonfinite': self.nonfinite,
        }
        if self.preprocessing is not None:
            # Only when steps run: keys of volumes without preprocessing stay as they were.
            inputs['preprocess'] = self.preprocessing.describe(digest)
        return inputs


@dataclass(frozen=True)
class SubjectPlan:
    """A subject as data: its id, reference grid, files (:class:`PlanEntry`) and extra fields.

    Args:
        id: The subject id.
        grid: The reference grid every file is resampled onto (x,y,z order).
        entries: One per file, in subject key order (stacked images in channel order).
        reference_used: Where the grid came from (a path, or a description).
        extra: The subject's extra manifest fields.
        transforms_applied: Readable lines of the transform chains, for ``meta``.

    Example:
        >>> grid = Grid((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> plan = SubjectPlan('sub-01', grid, (PlanEntry('images', 'images', 0, 'image', Path('t1.nii.gz')),))
        >>> plan.entry_of_key('images').source.name, plan.meta()['size']
        ('t1.nii.gz', (4, 5, 6))
    """

    id: str
    grid: Grid
    entries: tuple[PlanEntry, ...]
    reference_used: str = ''
    extra: Mapping[str, Any] = field(default_factory=dict)
    transforms_applied: tuple[str, ...] = ()

    def keys(self) -> list[str]:
        """The subject keys of the files, in order, each once."""
        return list(dict.fromkeys(entry.key for entry in self.entries))

    def entries_of(self, key: str) -> tuple[PlanEntry, ...]:
        """The files of subject key ``key`` (several for stacked images)."""
        return tuple(entry for entry in self.entries if entry.key == key)

    def entry_of_key(self, key: str) -> PlanEntry | None:
        """The first file of subject key ``key``, or None."""
        return next(iter(self.entries_of(key)), None)

    def entry_of_source(self, source: str | Path) -> PlanEntry | None:
        """The entry read from ``source`` (fillers excluded; the first one), or None."""
        try:
            wanted = Path(source).resolve()
        except (TypeError, OSError):
            return None
        return next((e for e in self.entries if not e.filler and e.source.resolve() == wanted), None)

    def entry_of_field(self, name: str, index: int) -> PlanEntry | None:
        """The file at ``index`` of manifest field ``name`` (``("rois", 0)``), or None."""
        listed = self.source_paths().get(name, [])
        if not isinstance(index, int) or not -len(listed) <= index < len(listed):
            return None
        index = index % len(listed)
        return next((e for e in self.entries if e.field == name and e.index == index and not e.filler), None)

    def source_paths(self) -> dict[str, list[str]]:
        """``{field: [path, ...]}`` of the manifest's files (no filler, no brain mask)."""
        return self._by_field(lambda entry: str(entry.source))

    def meta(self) -> dict[str, Any]:
        """``subject['meta']``, made from the plan: grid (x,y,z order), paths, names, history."""
        grid = self.grid
        meta: dict[str, Any] = {
            'spacing': grid.spacing,
            'origin': grid.origin,
            'direction': grid.direction,
            'size': grid.size,
            'orientation': grid.orientation(),
            'source_paths': self.source_paths(),
            'reference_used': self.reference_used,
            'transforms_applied': list(self.transforms_applied),
            # An unnamed file among named ones is named by its place (image_0, roi_1...), as the
            # subject keys are; '' when none is named (None would break PyTorch's default_collate).
            # Every field always (so is 'preprocessing'): a batch's collate needs the same keys in
            # every subject.
            'names': {
                name: [n or (f'{FIELD_ROLES[name]}_{i}' if any(names) else '') for i, n in enumerate(names)]
                for name, names in self._by_field(lambda e: e.name).items()
            },
        }
        # Per image, in meta['source_paths']['images'] order ([] without steps): keyed by
        # position, not path, and in every subject, so that subjects with and without steps collate.
        meta['preprocessing'] = self._by_field(_step_names)[FIELD_IMAGES]
        return meta

    def _by_field(self, value: Callable[[PlanEntry], Any]) -> dict[str, list[Any]]:
        """``value`` of each manifest file, by field, in the manifest's order."""
        listed: dict[str, dict[int, Any]] = {name: {} for name in FIELD_ROLES}
        for entry in self.entries:
            if not entry.filler and entry.key != BRAIN_MASK_KEY:
                listed[entry.field][entry.index] = value(entry)
        return {name: [values[i] for i in sorted(values)] for name, values in listed.items()}


def _step_names(entry: PlanEntry) -> list[str]:
    steps = () if entry.preprocessing is None else entry.preprocessing.steps
    return [getattr(step, 'name', '') or type(step).__name__ for step in steps]


def plan_of(subject: Any) -> SubjectPlan | None:
    """The :class:`SubjectPlan` a subject carries (built by ``subjects_from_manifest``), or None.

    Example:
        >>> plan_of({'id': 'not built by pyable-tio'}) is None
        True
    """
    plan = getattr(subject, '__dict__', {}).get(PLAN_ATTRIBUTE)
    return plan if isinstance(plan, SubjectPlan) else None


def attach_plan(subject: Any, plan: SubjectPlan) -> Any:
    """``subject`` carrying ``plan`` (an attribute: TorchIO copies it, batches never collate it)."""
    # Not a subject key: it would be collated, and TorchIO's attribute sync would overwrite it.
    subject.__dict__[PLAN_ATTRIBUTE] = plan
    return subject


def reference_grid(subject: Any) -> Grid | None:
    """The subject's reference grid (x,y,z order): its plan's; None when it has none.

    A subject assembled by hand (or a seed item dict) has no plan, only a ``meta`` grid:
    that is read instead, for them alone.

    Example:
        >>> reference_grid({'meta': {'size': (4, 5, 6), 'spacing': (1, 1, 2), 'origin': (0, 0, 0),
        ...                          'direction': (1, 0, 0, 0, 1, 0, 0, 0, 1)}}).shape_zyx
        (6, 5, 4)
    """
    plan = plan_of(subject)
    if plan is not None:
        return plan.grid
    return grid_from_meta(subject.get(META) if isinstance(subject, Mapping) else None)


def make_plan(
    checked: Any,
    *,
    stack_channels: bool = True,
    fill: Mapping[str, int] | None = None,
    steps: tuple[Any, ...] = (),
    interpolator: str = LINEAR,
    dtype: str = 'float32',
    default_value: float = DEFAULT_BACKGROUND,
    nonfinite: str = DEFAULT_NONFINITE,
) -> SubjectPlan:
    """The plan of one subject checked by :func:`pyable_tio.checking.headers.check_manifest`.

    Args:
        checked: A :class:`~pyable_tio.checking.headers.CheckedSubject` (record, reference, alignments).
        stack_channels: Images under one key ``"images"`` (True) or ``image_0``, ``image_1``...
        fill: ``{"rois"|"labelmaps"|"roi_brain": count}`` to reach with all-zero fillers.
        steps: The default preprocessing steps (a file's or subject's own win).
        interpolator: Image interpolator.
        dtype: NumPy dtype name of images.
        default_value: Image value outside a file's field of view (labels get 0).
        nonfinite: NaN/+-Inf policy.

    Example:
        >>> plan = make_plan(checked, stack_channels=False)  # doctest: +SKIP
        >>> plan.keys()  # doctest: +SKIP
        ['image_0', 'image_1', 'roi_0']
    """
    record, fill = checked.record, dict(fill or {})
    image = {'interpolator': interpolator, 'dtype': dtype, 'default_value': float(default_value),
             'nonfinite': nonfinite}
    label = {**image, 'default_value': 0.0}  # labels outside the field of view are background

    def chain(file: Any) -> tuple[TransformEntry, ...]:
        # Seed order: the file's own transforms, then the subject's, then the alignment (closest to the grid).
        alignment = checked.alignments.get(str(file.path))
        return (*file.transforms, *record.transforms, *(() if alignment is None else (alignment.entry,)))

    def steps_of(file: Any, output: str = PREPROCESS_IMAGE) -> Preprocessing | None:
        return preprocessing_for(record, file, steps, output) if file_steps(record, file, steps) else None

    entries = []
    for i, file in enumerate(record.images):
        key = IMAGES if stack_channels else f'{IMAGE_PREFIX}{i}'
        entries.append(PlanEntry(key, FIELD_IMAGES, i, 'image', file.path, chain(file), **image,
                              preprocessing=steps_of(file), name=file.name or ''))
    first = record.images[0].path
    for name, prefix in ((FIELD_ROIS, ROI_PREFIX), (FIELD_LABELMAPS, LABELMAP_PREFIX)):
        files = getattr(record, name)
        for i, file in enumerate(files):
            entries.append(PlanEntry(f'{prefix}{i}', name, i, FIELD_ROLES[name], file.path, chain(file), **label,
                                  name=file.name or ''))
        for i in range(len(files), fill.get(name, 0)):
            entries.append(PlanEntry(f'{prefix}{i}', name, i, 'labelmap', first, filler=True, **label))
    brain = brain_source(record, steps, checked.reference.index)
    if brain is not None:
        file = record.images[brain]
        entries.append(PlanEntry(BRAIN_MASK_KEY, FIELD_IMAGES, brain, 'roi', file.path, chain(file), **label,
                              preprocessing=steps_of(file, BRAIN_MASK)))
    elif fill.get(BRAIN_MASK_KEY):
        entries.append(PlanEntry(BRAIN_MASK_KEY, FIELD_ROIS, -1, 'labelmap', first, filler=True, **label))
    return SubjectPlan(record.id, checked.reference.grid, tuple(entries), checked.reference.used,
                       dict(record.extra), _applied(checked))


def _applied(checked: Any) -> tuple[str, ...]:
    """Each file's lines, in order, are its transform list (applied one after the other, as the seed does)."""
    record = checked.record
    lines = [f'{entry.path.name}: {t.describe()}' for _, entry in record.entries() for t in entry.transforms]
    lines += [f'all files: {t.describe()}' for t in record.transforms]
    lines += [alignment.describe() for alignment in checked.alignments.values()]
    return tuple(lines)
