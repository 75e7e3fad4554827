"""Registration transforms: read, invert and compose them into one ITK transform.

Convention (ITK's): a transform maps points of the output (reference) grid to points of the
file being read, i.e. fixed-space points to moving-space points, exactly what a registration
with the reference as fixed image writes. A list is applied in list order to each grid point:
``p_file = T_n(... T_2(T_1(p_grid)))``. ``invert`` uses the inverse of what a file holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from .errors import short_error
from .manifest.records import TransformEntry

#: Files read as displacement fields (vector images) rather than transform files.
FIELD_SUFFIXES = ('.nii', '.nii.gz', '.mha', '.mhd', '.nrrd', '.nhdr')


def is_displacement_field(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in FIELD_SUFFIXES)


def load_transform(entry: TransformEntry) -> sitk.Transform:
    """The transform an entry describes, inverted when asked.

    Raises:
        ValueError: unreadable file, or a transform with no inverse when ``invert`` is set.
    """
    source = entry.source
    if isinstance(source, sitk.Transform):
        transform = sitk.Transform(source)
    elif is_displacement_field(source):
        transform = _read_displacement_field(source, entry.invert)
        return transform
    else:
        try:
            transform = sitk.ReadTransform(str(source))
        except RuntimeError as error:
            raise ValueError(f'unreadable transform file: {short_error(error)}') from None
    if entry.invert:
        try:
            transform = transform.GetInverse()
        except RuntimeError:
            name = transform.GetName()
            raise ValueError(f'{name} has no inverse; provide the opposite transform') from None
    return transform


def compose(entries: Sequence[TransformEntry]) -> sitk.Transform | None:
    """One transform equal to applying ``entries`` in list order, or None if empty."""
    if not entries:
        return None
    transforms = [load_transform(entry) for entry in entries]
    if len(transforms) == 1:
        return transforms[0]
    # A CompositeTransform applies the transform added last first.
    return sitk.CompositeTransform(list(reversed(transforms)))


def _read_displacement_field(path: Path, invert: bool) -> sitk.Transform:
    try:
        field = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f'unreadable displacement field: {short_error(error)}') from None
    if field.GetNumberOfComponentsPerPixel() != field.GetDimension():
        problem = (
            f'a displacement field needs {field.GetDimension()} components per voxel,'
            f' found {field.GetNumberOfComponentsPerPixel()}'
        )
        raise ValueError(problem)
    field = sitk.Cast(field, sitk.sitkVectorFloat64)
    if invert:
        field = sitk.InvertDisplacementField(field, enforceBoundaryCondition=True)
    return sitk.DisplacementFieldTransform(field)

