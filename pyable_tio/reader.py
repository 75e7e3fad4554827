"""The TorchIO reader: load a file, transform and resample it onto the subject's grid.

A reader runs every time TorchIO loads an image, in DataLoader worker processes, and is
deep-copied with its image by every transform, so it holds only the grid and its files'
:class:`~pyable_tio.plan.PlanEntry` objects (each one's source, transforms and options).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .io import backend
from .io import integrity
from .geometry import registration
from .checking import labels as label_checks
from .constants import DEFAULT_BACKGROUND, DEFAULT_NONFINITE, LINEAR, NONFINITE_KEEP
from .errors import LabelValuesWarning, LoadError, describe, short_error
from .geometry.grid import Grid, reorient_grid
from .cache.digest import SourceChanged, digest_of, source_identity
from .manifest.records import TransformEntry
from .plan import PlanEntry
from .preprocess import Preprocessing


@dataclass(frozen=True, eq=False)
class GridReader:
    """Callable ``reader=`` for ``tio.ScalarImage``/``tio.LabelMap``.

    Returns the file resampled onto ``grid`` in one interpolation as a C x D x H x W array
    (Z,Y,X spatial order; 2-D files give C x 1 x H x W) and the voxel-to-RAS affine whose
    columns follow Z,Y,X. A file already on the grid with no transform is returned untouched.

    Args:
        grid: The subject's reference grid.
        role: ``"image"``, ``"roi"`` or ``"labelmap"``; ROIs and label maps are nearest-neighbour.
        subject_id: For error messages.
        interpolator: Interpolator for images (``"linear"``, ``"bspline"``, ...).
        transforms: Per file path, the transforms applied to it, in order (a shorthand: they
            become ``entries``).
        dtype: NumPy dtype name for images (label maps keep their pixel type).
        default_value: Value outside the file's field of view.
        cache: Optional volume cache (``pyable_tio.cache.VolumeCache``).
        nonfinite: NaN/+-Inf voxels, handled before interpolation: ``"error"`` (default:
            :class:`~pyable_tio.errors.LoadError` naming subject and file), ``"zero"``
            (replaced by 0) or ``"keep"`` (as stored; interpolation spreads a NaN to the
            voxels around it, and +-Inf stays +-Inf).
        preprocessing: Per file path, the steps run on it in its native space before the
            transforms and the resampling (:class:`~pyable_tio.preprocess.Preprocessing`);
            their result has its own cache entry (a shorthand: they become ``entries``).
        entries: The files' :class:`~pyable_tio.plan.PlanEntry` objects (what
            ``subjects_from_manifest`` passes, through :meth:`for_entries`).

    ``entries`` are the reader's only state: ``transforms`` and ``preprocessing``, given or not,
    are views of them afterwards, and a path without an entry is read with the options above.
    Giving both ``entries`` and one of the shorthands is an error.

    Example:
        >>> reader = GridReader(grid, 'image', 'sub-01')  # doctest: +SKIP
        >>> image = tio.ScalarImage('t2.nii.gz', reader=reader)  # doctest: +SKIP
        >>> image.data.shape  # C, D, H, W on grid  # doctest: +SKIP
    """

    grid: Grid
    role: str
    subject_id: str
    interpolator: str = LINEAR
    transforms: Mapping[str, tuple[TransformEntry, ...]] = field(default_factory=dict)
    dtype: str = 'float32'
    default_value: float = DEFAULT_BACKGROUND
    cache: object | None = None
    nonfinite: str = DEFAULT_NONFINITE
    preprocessing: Mapping[str, Preprocessing] = field(default_factory=dict)
    entries: tuple[PlanEntry, ...] = ()

    def __post_init__(self) -> None:
        backend.interpolator_for(self.role, self.interpolator)
        integrity.check_nonfinite_mode(self.nonfinite)
        entries = tuple(self.entries)
        if self.transforms or self.preprocessing:
            if entries:
                raise ValueError('give a GridReader either entries or transforms/preprocessing, not both')
            transforms = {str(path): tuple(chain) for path, chain in self.transforms.items()}
            steps = {str(path): step for path, step in self.preprocessing.items()}
            entries = tuple(
                PlanEntry('', '', 0, self.role, Path(path), transforms.get(path, ()), self.interpolator, self.dtype,
                          float(self.default_value), self.nonfinite, steps.get(path))
                for path in dict.fromkeys([*transforms, *steps])
            )
        object.__setattr__(self, 'entries', entries)
        # Views of the entries, for code reading them by path.
        object.__setattr__(self, 'transforms', {str(e.source): e.transforms for e in entries})
        object.__setattr__(self, 'preprocessing',
                           {str(e.source): e.preprocessing for e in entries if e.preprocessing is not None})
        object.__setattr__(self, '_by_source', {str(e.source): e for e in entries})

    @classmethod
    def for_entries(
        cls, grid: Grid, subject_id: str, entries: Sequence[PlanEntry], cache: object | None = None
    ) -> GridReader:
        """The reader of one subject key's files (:class:`~pyable_tio.plan.PlanEntry`, same role).

        Example:
            >>> reader = GridReader.for_entries(plan.grid, plan.id, plan.entries_of('roi_0'))  # doctest: +SKIP
        """
        first = entries[0]
        return cls(grid, first.role, subject_id, first.interpolator, dtype=first.dtype,
                   default_value=first.default_value, cache=cache, nonfinite=first.nonfinite, entries=tuple(entries))

    def entry(self, path: str | Path) -> PlanEntry:
        """The plan entry of ``path``: one of ``entries``, else made from the reader's options."""
        found = self._by_source.get(str(path))
        return found if found is not None else PlanEntry(
            '', '', 0, self.role, Path(path), (), self.interpolator, self.dtype, float(self.default_value),
            self.nonfinite,
        )

    def __call__(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        entry = self.entry(path)
        try:
            if self.cache is not None:
                # The cache sees the key's inputs, the files and a function: never the reader.
                array = self.cache.compute_once(lambda: self.cache_inputs(path), lambda: self.read_entry(entry),
                                                entry.files(), self.grid.to_dict())
            else:
                array = self.read_entry(entry)
        except SourceChanged as error:
            raise LoadError(describe(self.subject_id, f'file {path}', str(error))) from None
        return array, self.grid.affine_zyx()

    def read(self, path: str | Path) -> np.ndarray:
        """The resampled C x D x H x W array, without the cache."""
        try:
            return self.read_entry(self.entry(path))
        except SourceChanged as error:
            raise LoadError(describe(self.subject_id, f'file {path}', str(error))) from None

    def cache_inputs(self, path: str | Path) -> dict:
        """What the volume of ``path`` depends on (:meth:`~pyable_tio.plan.PlanEntry.cache_inputs`),
        with the cache's on-disk digest memo when there is a cache.

        Raises:
            OSError: a file cannot be read.

        Example:
            >>> reader.cache_inputs('t2.nii.gz')['role']  # doctest: +SKIP
            'image'
        """
        digest = getattr(self.cache, 'source_digest', None)
        entry = self.entry(path)
        return entry.cache_inputs(self.grid) if digest is None else entry.cache_inputs(self.grid, digest)

    def cache_key(self, path: str | Path) -> str:
        """The cache key of the volume of ``path`` (SHA-256 of :meth:`cache_inputs`).

        Example:
            >>> reader.cache.get(reader.cache_key('t2.nii.gz')) is not None  # doctest: +SKIP
            True
        """
        return digest_of(self.cache_inputs(path))

    def files(self, path: str | Path) -> tuple[str, ...]:
        """The files the volume of ``path`` is read from: it, its transform files and masks.

        Example:
            >>> reader.files('t2.nii.gz')  # doctest: +SKIP
            ('t2.nii.gz', 'rigid.tfm')
        """
        return self.entry(path).files()

    def read_entry(self, entry: PlanEntry) -> np.ndarray:
        """The resampled C x D x H x W (Z,Y,X) array of one plan entry, without the cache."""
        path, role, steps = entry.source, entry.role, entry.preprocessing
        where = f'file {path}'
        identity = None
        if steps is not None:
            try:
                # Before the read: the steps' results are stored only if it still holds after.
                identity = source_identity(steps.files(path))
            except OSError:
                pass  # missing: the load below says so
        try:
            # A mask made by a step (roi_brain) comes from an image file: read it as one.
            image = backend.load(path, role if steps is None else backend.ROLE_IMAGE)
            # Before any interpolation (and any step), so that a replaced value spreads nowhere.
            image, has_inf = integrity.apply_nonfinite(image, entry.nonfinite)
        except (ValueError, RuntimeError) as error:
            if not isinstance(error, ValueError):  # truncation and non-finite messages are complete
                error = f'unreadable image: {short_error(error)}'
            raise LoadError(describe(self.subject_id, where, str(error))) from None
        if role != backend.ROLE_IMAGE and steps is None:
            problem = integrity.label_problem(image, role)
            if problem is not None:
                raise LoadError(describe(self.subject_id, where, problem))
            image = label_checks.as_integer_labels(image)  # batches of label maps stay integer
            self._check_labels(image, entry)
        if steps is not None:
            image = self._preprocessed(image, path, steps, identity)
        if image.GetDimension() != self.grid.dimension:
            problem = (
                f'mismatched dimensions: the file is {image.GetDimension()}-D,'
                f' the reference grid is {self.grid.dimension}-D'
            )
            raise LoadError(describe(self.subject_id, where, problem))
        try:
            transform = registration.compose(entry.transforms)
        except ValueError as error:
            raise LoadError(describe(self.subject_id, where, str(error))) from None
        on_grid = self._exactly_on_grid(image) if transform is None else None
        if on_grid is not None:
            image = on_grid
        else:
            try:
                image = backend.resample(
                    image, self.grid, role, entry.interpolator, transform, entry.default_value
                )
            except RuntimeError as error:
                raise LoadError(describe(self.subject_id, where, f'resampling failed: {short_error(error)}')) from None
            if has_inf and entry.nonfinite == NONFINITE_KEEP:
                return integrity.restore_infinities(self._to_array(image, entry))
        return self._to_array(image, entry)

    def _check_labels(self, image: sitk.Image, entry: PlanEntry) -> None:
        """Warn about implausible label values; warn or refuse when the grid loses the foreground.

        Here, where the voxels are read anyway (once per file with a cache): planning reads
        headers only. Losing most of the foreground warns (a slab reference may crop a label map
        on purpose); losing (almost) all of it is an error (the map would teach "background").
        """
        where = f'field "{entry.field}": file {entry.source}' if entry.field else f'file {entry.source}'
        if entry.role == backend.ROLE_LABELMAP:
            problem = label_checks.values_problem(image)
            if problem is not None:
                warnings.warn(describe(self.subject_id, where, problem), LabelValuesWarning, stacklevel=2)
        if entry.transforms or image.GetDimension() != self.grid.dimension:
            return  # moved before resampling (its own space may differ); dimensions: refused below
        level, problem = label_checks.foreground_problem(image, self.grid)
        if level == 'error':
            raise LoadError(describe(self.subject_id, where, problem))
        if level == 'warning':
            warnings.warn(describe(self.subject_id, where, problem), LabelValuesWarning, stacklevel=2)

    def _preprocessed(self, image: sitk.Image, path: str | Path, steps: Preprocessing,
                      identity: tuple | None) -> sitk.Image:
        where = f'file {path}'
        try:
            return steps.run(image, path, self.cache, identity)
        except (ValueError, RuntimeError) as error:
            problem = f'preprocessing failed: {short_error(error)}'
            raise LoadError(describe(self.subject_id, where, problem)) from None

    def _exactly_on_grid(self, image: sitk.Image) -> sitk.Image | None:
        """``image``, or ``image`` with axes permuted/flipped, when its voxels are the grid's; else None."""
        source = Grid.from_image(image)
        if source.matches(self.grid):
            return image
        if source.dimension != 3:
            return None
        code = self.grid.orientation()
        if not reorient_grid(source, code).matches(self.grid):
            return None
        # Same voxel centres in another axis order (orientation option): exact, no interpolation.
        permuted = backend.reorient(image, code)
        return permuted if Grid.from_image(permuted).matches(self.grid) else None

    def _to_array(self, image: sitk.Image, entry: PlanEntry) -> np.ndarray:
        array = sitk.GetArrayFromImage(image)
        if image.GetNumberOfComponentsPerPixel() > 1:
            array = np.moveaxis(array, -1, 0)
        else:
            array = array[np.newaxis]
        if self.grid.dimension == 2:
            array = array[:, np.newaxis]
        if entry.role == backend.ROLE_IMAGE and array.dtype != entry.dtype:
            array = array.astype(entry.dtype)
        return np.ascontiguousarray(array)

