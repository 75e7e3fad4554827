"""Registration transforms: read, invert and compose them into one ITK transform.

Convention (ITK's): a transform maps points of the output (reference) grid to points of the
file being read, i.e. fixed-space points to moving-space points, exactly what a registration
with the reference as fixed image writes. A list composes as the seed applies it, one
``applyTransform`` after the other (each resamples the previous result at ``T(p)``):
``[T_1, ..., T_n]`` gives ``p_file = T_1(T_2(... T_n(p_grid)))``, which is
``sitk.CompositeTransform([T_1, ..., T_n])`` and ANTs' ``antsApplyTransforms -t T_1 ... -t T_n``.
``invert`` uses the inverse of what a file holds.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from ..cache.digest import digest_of, file_digest
from ..errors import short_error
from .grid import read_header
from ..manifest.records import TransformEntry

#: Files read as displacement fields (vector images) rather than transform files.
FIELD_SUFFIXES = ('.nii', '.nii.gz', '.mha', '.mhd', '.nrrd', '.nhdr')


def is_displacement_field(path: Path) -> bool:
    """True for image files (read as displacement fields), by suffix.

    Example:
        >>> is_displacement_field(Path('warp.nii.gz')), is_displacement_field(Path('rigid.tfm'))
        (True, False)
    """
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in FIELD_SUFFIXES)


def load_transform(entry: TransformEntry) -> sitk.Transform:
    """The transform an entry describes, inverted when asked.

    Args:
        entry: A transform file, displacement field or in-memory ``sitk.Transform``.

    Returns:
        A new ``sitk.Transform`` (the entry's own object is never modified).

    Raises:
        ValueError: naming the file: unreadable, or no inverse when ``invert`` is set.

    Example:
        >>> load_transform(TransformEntry(Path('t2_to_t1.tfm'), invert=True))  # doctest: +SKIP
    """
    source = entry.source
    where = _where(entry)
    if isinstance(source, sitk.Transform):
        transform = sitk.Transform(source)
    elif is_displacement_field(source):
        return _read_displacement_field(source, entry.invert)
    else:
        try:
            transform = sitk.ReadTransform(str(source))
        except RuntimeError as error:
            raise ValueError(f'{where}: unreadable transform file: {short_error(error)}') from None
    if entry.invert:
        try:
            transform = transform.GetInverse()
        except RuntimeError:
            name = transform.GetName()
            raise ValueError(f'{where}: {name} has no inverse; provide the opposite transform') from None
    return transform


def check_transform(entry: TransformEntry, dimension: int) -> None:
    """Fail early on a transform the reader could not use on a ``dimension``-D grid.

    Transform files are read (they are small); displacement fields only by header.

    Raises:
        ValueError: naming the file: unreadable, not invertible, or of another dimension.

    Example:
        >>> check_transform(TransformEntry(Path('rigid.tfm')), 3)  # doctest: +SKIP
    """
    where = _where(entry)
    if isinstance(entry.source, Path) and is_displacement_field(entry.source):
        try:
            header = read_header(entry.source)
        except RuntimeError as error:
            raise ValueError(f'{where}: unreadable displacement field: {short_error(error)}') from None
        found, components = header.GetDimension(), header.GetNumberOfComponents()
        if components != found:
            problem = f'a displacement field needs {found} components per voxel, found {components}'
            raise ValueError(f'{where}: {problem}')
    else:
        found = load_transform(entry).GetDimension()
    if found != dimension:
        raise ValueError(f'{where}: a {found}-D transform cannot map a {dimension}-D grid')


def describe_transform(transform: sitk.Transform) -> str:
    """A one-line readable summary: type and, for rigid/affine, angles and translation.

    Example:
        >>> describe_transform(sitk.TranslationTransform(3, (1.0, 0.0, -2.0)))
        'TranslationTransform: translation (1.00, 0.00, -2.00) mm'
    """
    name = transform.GetName()
    if name == 'CompositeTransform':
        composite = sitk.CompositeTransform(transform)
        # A CompositeTransform applies its last transform first: list in order of application.
        count = composite.GetNumberOfTransforms()
        parts = [describe_transform(composite.GetNthTransform(i)) for i in range(count)]
        return 'CompositeTransform of [' + '; then '.join(reversed(parts)) + ']'
    if name == 'TranslationTransform':
        offset = sitk.TranslationTransform(transform).GetOffset()
        return f'{name}: translation {_numbers(offset)} mm'
    if name in ('Euler3DTransform', 'Euler2DTransform'):
        if name == 'Euler3DTransform':
            euler = sitk.Euler3DTransform(transform)
            angles = [euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ()]
        else:
            euler = sitk.Euler2DTransform(transform)
            angles = [euler.GetAngle()]
        degrees = [math.degrees(a) for a in angles]
        return f'{name}: rotation {_numbers(degrees)} deg, translation {_numbers(euler.GetTranslation())} mm'
    if name == 'AffineTransform':
        affine = sitk.AffineTransform(transform)
        dim = affine.GetDimension()
        rows = [_numbers(affine.GetMatrix()[i * dim:(i + 1) * dim], 4) for i in range(dim)]
        return f'{name}: matrix [{", ".join(rows)}], translation {_numbers(affine.GetTranslation())} mm'
    if name == 'DisplacementFieldTransform':
        size = sitk.DisplacementFieldTransform(transform).GetDisplacementField().GetSize()
        return f'{name}: field of {"x".join(map(str, size))} vectors'
    return name


def compose(entries: Sequence[TransformEntry]) -> sitk.Transform | None:
    """One transform equal to applying ``entries`` one after the other, or None if empty.

    ``[T_1, ..., T_n]`` maps a grid point ``p`` to ``T_1(T_2(... T_n(p)))`` in the file: the
    seed's ``for t in transforms: img = img.applyTransform(t)``, in one interpolation.

    Example:
        >>> a, b = sitk.TranslationTransform(3, (1.0, 0, 0)), sitk.ScaleTransform(3, (2.0, 1, 1))
        >>> compose([TransformEntry(a), TransformEntry(b)]).TransformPoint((1.0, 0, 0))  # a(b(p))
        (3.0, 0.0, 0.0)
    """
    if not entries:
        return None
    transforms = [load_transform(entry) for entry in entries]
    if len(transforms) == 1:
        return transforms[0]
    # ITK's CompositeTransform applies the transform added last first: exactly the seed's order.
    return sitk.CompositeTransform(transforms)


def _read_displacement_field(path: Path, invert: bool) -> sitk.Transform:
    try:
        field = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f'transform {path}: unreadable displacement field: {short_error(error)}') from None
    if field.GetNumberOfComponentsPerPixel() != field.GetDimension():
        problem = (
            f'transform {path}: a displacement field needs {field.GetDimension()} components per voxel,'
            f' found {field.GetNumberOfComponentsPerPixel()}'
        )
        raise ValueError(problem)
    field = sitk.Cast(field, sitk.sitkVectorFloat64)
    if invert:
        field = sitk.InvertDisplacementField(field, enforceBoundaryCondition=True)
    return sitk.DisplacementFieldTransform(field)


def _where(entry: TransformEntry) -> str:
    if isinstance(entry.source, Path):
        return f'transform {entry.source}'
    return f'in-memory {entry.source.GetName()}'


def _numbers(values, digits: int = 2) -> str:
    return '(' + ', '.join(f'{v:.{digits}f}' for v in values) + ')'


# ----------------------------------------------------------------- digests for cache keys


def transform_digest(transform: sitk.Transform) -> str:
    """SHA-256 of an in-memory SimpleITK transform (type, parameters, nested transforms)."""
    return hashlib.sha256(json.dumps(_describe_transform(transform)).encode()).hexdigest()


def transform_files(entries: Sequence[TransformEntry]) -> list[str]:
    """The files among ``entries`` (in-memory transforms have none), in order.

    Example:
        >>> transform_files([TransformEntry(Path('rigid.tfm')), TransformEntry(sitk.Euler3DTransform())])
        ['rigid.tfm']
    """
    return [str(t.source) for t in entries if isinstance(t.source, (str, Path))]


def entries_digest(entries: Sequence[TransformEntry], digest: Callable[[Path], str] = file_digest) -> str:
    """SHA-256 of a list of transform entries: their contents, order and invert flags.

    Example:
        >>> entries_digest([TransformEntry(Path('rigid.tfm'))])  # doctest: +SKIP
        'c3ab8ff13720e8ad...'
    """
    parts = []
    for entry in entries:
        if isinstance(entry.source, sitk.Transform):
            content = transform_digest(entry.source)
        else:
            content = digest(entry.source)
        parts.append({'content': content, 'invert': bool(entry.invert)})
    return digest_of(parts)


def _describe_transform(transform: sitk.Transform) -> dict[str, Any]:
    if transform.GetName() == 'CompositeTransform':
        composite = sitk.CompositeTransform(transform)
        nested = [_describe_transform(composite.GetNthTransform(i)) for i in range(composite.GetNumberOfTransforms())]
        return {'name': 'CompositeTransform', 'transforms': nested}
    if transform.GetName() == 'DisplacementFieldTransform':
        field = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
        array = sitk.GetArrayViewFromImage(field)
        return {
            'name': 'DisplacementFieldTransform',
            'field': hashlib.sha256(array.tobytes()).hexdigest(),
            'grid': [field.GetSize(), field.GetSpacing(), field.GetOrigin(), field.GetDirection()],
        }
    return {
        'name': transform.GetName(),
        'parameters': list(transform.GetParameters()),
        'fixed': list(transform.GetFixedParameters()),
    }
