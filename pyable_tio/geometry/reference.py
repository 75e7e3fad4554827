"""Choosing each subject's reference grid from file headers (never voxel data)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, Union

import SimpleITK as sitk

from ..constants import REFERENCE_FIRST, REFERENCE_LARGEST
from ..errors import ManifestError, describe, short_error
from .grid import Grid, read_header
from ..manifest.records import SubjectRecord


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says: its grid, pixel type and components per voxel.

    Reference callables receive the subject's images as a list of these.

    Example:
        >>> header = ImageHeader.read(Path('t1.nii.gz'))  # doctest: +SKIP
        >>> header.grid.size, header.pixel_type, header.components  # doctest: +SKIP
        ((48, 40, 32), '16-bit signed integer', 1)
    """

    path: Path
    grid: Grid
    pixel_type: str
    components: int

    @classmethod
    def read(cls, path: Path) -> ImageHeader:
        """Raises ``RuntimeError`` when the header cannot be read."""
        reader = read_header(path)
        pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        return cls(path, Grid.from_image(reader), pixel_type, reader.GetNumberOfComponents())


#: ``"first"``, ``"largest"``, an index, or ``f(headers) -> index``.
ReferenceSelector = Union[str, int, Callable[[Sequence[ImageHeader]], int]]
#: A global reference space: an image path, a grid dict (x,y,z order) or a Grid.
ReferenceSpace = Union[str, Path, Mapping[str, Any], Grid]


@dataclass(frozen=True)
class Reference:
    """The grid a subject is resampled onto, and where it came from."""

    grid: Grid
    used: str
    index: int | None = None


def grid_of_space(space: ReferenceSpace, subject_id: str | None = None) -> tuple[Grid, str]:
    """A reference space as a grid, plus a readable description of its source."""
    where = 'reference_space'
    if isinstance(space, Grid):
        return space, 'reference_space (grid)'
    if isinstance(space, Mapping):
        try:
            return Grid.from_dict(space), 'reference_space (dict)'
        except ValueError as error:
            raise ManifestError.from_problems([describe(subject_id, where, str(error))]) from None
    path = Path(space)
    try:
        return Grid.from_image(read_header(path)), str(path)
    except RuntimeError as error:
        problem = f'file {path}: unreadable image header: {short_error(error)}'
        raise ManifestError.from_problems([describe(subject_id, where, problem)]) from None


def choose_reference(
    record: SubjectRecord,
    headers: Sequence[ImageHeader],
    selector: ReferenceSelector = REFERENCE_FIRST,
    reference_space: ReferenceSpace | Reference | None = None,
) -> Reference:
    """The subject's reference grid.

    Precedence: the global ``reference_space`` argument, then the subject's own
    ``reference_space``, then its ``reference``, then ``selector``.

    Args:
        record: The subject.
        headers: Headers of ``record.images``, in order.
        selector: ``"first"``, ``"largest"`` (most voxels), an index, or a callable given
            the image headers that returns an index.
        reference_space: A grid for every subject (or an already resolved :class:`Reference`).
    """
    if isinstance(reference_space, Reference):
        return reference_space
    space = reference_space if reference_space is not None else record.reference_space
    if space is not None:
        grid, used = grid_of_space(space, record.id)
        return Reference(grid, used)
    choice = record.reference if record.reference is not None else selector
    if isinstance(choice, Path):
        index = next((i for i, h in enumerate(headers) if h.path == choice), None)
        if index is not None:  # one of the subject's images: its header is already read
            return Reference(headers[index].grid, str(choice), index)
        grid, used = grid_of_space(choice, record.id)
        return Reference(grid, used, index)
    index = _index(choice, headers, record.id)
    return Reference(headers[index].grid, str(headers[index].path), index)


def _index(choice: Any, headers: Sequence[ImageHeader], subject_id: str) -> int:
    if choice == REFERENCE_FIRST:
        return 0
    if choice == REFERENCE_LARGEST:
        sizes = [h.grid.num_voxels for h in headers]
        return sizes.index(max(sizes))
    if callable(choice):
        index = choice(list(headers))
    elif isinstance(choice, Integral) and not isinstance(choice, bool):
        index = choice
    else:
        problem = f'expected "first", "largest", an index, a path or a callable, got {choice!r}'
        raise ManifestError.from_problems([describe(subject_id, 'reference', problem)])
    if isinstance(index, Integral) and not isinstance(index, bool):
        index = int(index)  # e.g. numpy.argmax's np.int64
    if not isinstance(index, int) or not 0 <= index < len(headers):
        problem = f'index {index!r} out of range for {len(headers)} image(s)'
        raise ManifestError.from_problems([describe(subject_id, 'reference', problem)])
    return index
