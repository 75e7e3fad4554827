"""The one seam between pyable and the package's own SimpleITK path.

Both backends load a file and resample it onto a grid through an optional transform, in a
single interpolation, with the same semantics: the interpolator is chosen by the entry's role
(never by pyable class or pixel type), voxels outside the source's field of view get
``default_value`` (no nearest-neighbour extrapolation), and images are resampled in float32 so
that integer scanners' data are interpolated, not truncated.

pyable is imported lazily, once, the first time a backend function runs (it pulls in vtk,
matplotlib and scikit-image); any failure to import it selects the SimpleITK path. The
``PYABLE_TIO_BACKEND`` environment variable chooses: ``auto`` (default), ``simpleitk``
(forced) or ``pyable`` (required: a clear ``ImportError`` when it cannot be imported).

Every source file the package reads goes through :func:`load` (readers, alignment) and every
resampling of a source file through :func:`resample`. Two things are outside on purpose, since
they are not image data read for a subject: header reads (``geometry.read_header``, SimpleITK's
``ImageFileReader`` without pixels; pyable has no header-only read) and ``native.to_native``,
which resamples a prediction tensor the package itself built (SimpleITK's ``Resample`` with the
inverse transform and the prediction's own pixel type; pyable would add nothing but a copy).
Displacement-field transforms are read by ``registration`` as transforms, not as images.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from pathlib import Path
from types import ModuleType

import SimpleITK as sitk

from . import nifti
from . import sources
from ..constants import BACKEND_AUTO, BACKEND_ENV_VAR, BACKEND_PYABLE, BACKEND_SIMPLEITK, BACKENDS, BSPLINE, LINEAR, NEAREST
from ..geometry.grid import Grid

ROLE_IMAGE = 'image'
ROLE_ROI = 'roi'
ROLE_LABELMAP = 'labelmap'
ROLES = (ROLE_IMAGE, ROLE_ROI, ROLE_LABELMAP)

SITK_INTERPOLATORS = {
    LINEAR: sitk.sitkLinear,
    NEAREST: sitk.sitkNearestNeighbor,
    BSPLINE: sitk.sitkBSpline,
    'gaussian': sitk.sitkGaussian,
    'lanczos': sitk.sitkLanczosWindowedSinc,
}

#: pyable class used for each role (the class also sets pyable's own defaults).
_PYABLE_CLASSES = {ROLE_IMAGE: 'SITKImaginable', ROLE_ROI: 'Roiable', ROLE_LABELMAP: 'LabelMapable'}
#: Methods the pyable path needs; a pyable without them (pre-v3) counts as not importable.
_PYABLE_METHODS = ('resampleOnTargetImage', 'applyTransform', 'isImageSet')
#: pyable's non-inverting resampler with explicit SimpleITK settings (sic: "Regitration").
_PYABLE_EXPLICIT_RESAMPLER = 'transformFromRegitration'
#: Interpolator names pyable's ``applyTransform`` knows; it silently turns others into linear.
_PYABLE_TRANSFORM_INTERPOLATORS = frozenset({LINEAR, NEAREST, BSPLINE, 'gaussian'})
#: Pixel types on which ``applyTransform`` forces nearest-neighbour and a 0 fill.
_INTEGER_PIXEL_IDS = frozenset({
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
})

_LOGGER = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _import_pyable() -> tuple[ModuleType | None, str]:
    """``(pyable.imaginable, '')`` or ``(None, reason)``; tried once per process."""
    # pyable imports matplotlib.pyplot at import time; never open a display for it.
    os.environ.setdefault('MPLBACKEND', 'Agg')
    try:
        module = importlib.import_module('pyable.imaginable')
        missing = [
            f'{name}.{method}'
            for name in _PYABLE_CLASSES.values()
            for method in _PYABLE_METHODS
            if not hasattr(getattr(module, name, None), method)
        ]
        if missing:
            raise ImportError(f'pyable is too old (no {", ".join(missing)}); pyable v3 is needed')
    except Exception as error:  # noqa: BLE001 - pyable's import chain (vtk, pynico, ...) fails in many ways
        reason = f'{type(error).__name__}: {error}'
        _LOGGER.debug('pyable is not usable (%s); using the SimpleITK backend', reason)
        return None, reason
    return module, ''


def _requested_backend() -> str:
    value = os.environ.get(BACKEND_ENV_VAR, '').strip().lower() or BACKEND_AUTO
    if value not in BACKENDS:
        raise ValueError(f'{BACKEND_ENV_VAR} must be one of {BACKENDS}, got {value!r}')
    return value


def _pyable_module() -> ModuleType | None:
    """pyable's ``imaginable`` module when the pyable path is used, else ``None``."""
    requested = _requested_backend()
    if requested == BACKEND_SIMPLEITK:
        return None
    module, reason = _import_pyable()
    if module is None and requested == BACKEND_PYABLE:
        raise ImportError(
            f'{BACKEND_ENV_VAR}=pyable but pyable cannot be used ({reason}). Install it with'
            f' `pip install "pyable-tio[pyable]"`, or unset {BACKEND_ENV_VAR} to use SimpleITK.'
        )
    return module


def pyable_available() -> bool:
    """Whether the pyable path is used: pyable v3 imports and is not disabled.

    Returns:
        ``False`` when ``pyable.imaginable`` cannot be imported or when
        ``PYABLE_TIO_BACKEND=simpleitk``.

    Raises:
        ValueError: If ``PYABLE_TIO_BACKEND`` has an unknown value.

    Example:
        >>> import pyable_tio as pt
        >>> pt.io.backend.pyable_available() in (True, False)
        True
    """
    try:
        return _pyable_module() is not None
    except ImportError:
        return False


def active_backend() -> str:
    """The backend that loads and resamples files.

    Returns:
        ``"pyable"`` or ``"simpleitk"``.

    Raises:
        ImportError: If ``PYABLE_TIO_BACKEND=pyable`` and pyable cannot be imported.
        ValueError: If ``PYABLE_TIO_BACKEND`` has an unknown value.

    Example:
        >>> import pyable_tio as pt
        >>> pt.io.backend.active_backend() in ('pyable', 'simpleitk')
        True
    """
    return BACKEND_PYABLE if _pyable_module() is not None else BACKEND_SIMPLEITK


def interpolator_for(role: str, requested: str) -> str:
    """The interpolator name used for an entry: ROIs and label maps are always nearest.

    Args:
        role: ``"image"``, ``"roi"`` or ``"labelmap"``.
        requested: Interpolator asked for images (a key of ``SITK_INTERPOLATORS``).

    Returns:
        ``requested`` for images, ``"nearest"`` otherwise.

    Raises:
        ValueError: If ``role`` or ``requested`` is unknown.

    Example:
        >>> interpolator_for('labelmap', 'bspline')
        'nearest'
    """
    _check_role(role)
    if requested not in SITK_INTERPOLATORS:
        raise ValueError(f'interpolator must be one of {sorted(SITK_INTERPOLATORS)}, got {requested!r}')
    return requested if role == ROLE_IMAGE else NEAREST


def load(path: str | Path, role: str) -> sitk.Image:
    """Read a file or DICOM series as a SimpleITK image, through pyable when it is the active backend.

    Voxels arrive as stored: a NIfTI file is checked for truncation first (cheaply: a ``stat``
    or the gzip trailer), and float NIfTI voxels, DICOM series and other formats are read by
    :func:`pyable_tio.io.sources.read_image` in both backends (SimpleITK's NIfTI reader, and so
    pyable's, turns NaN and +-Inf into 0). pyable reads the other files.

    Args:
        path: Image file, DICOM folder or series locator ``folder#UID``.
        role: ``"image"`` (returned as float32 unless already float64), ``"roi"`` or
            ``"labelmap"`` (pixel type kept; ROIs are not binarised).

    Returns:
        The image (x,y,z geometry as stored in the file).

    Raises:
        RuntimeError: If the file does not exist or cannot be read.
        pyable_tio.io.nifti.TruncatedFileError: If a NIfTI file is shorter than its header says.
        ValueError: If ``role`` is unknown.

    Example:
        >>> image = load('t1.nii.gz', 'image')  # doctest: +SKIP
        >>> image.GetPixelIDTypeAsString()  # doctest: +SKIP
        '32-bit float'
    """
    _check_role(role)
    module = _pyable_module()
    if module is None or _read_by_sources(path):
        image = sources.read_image(path)
    else:
        sources.check_length(path)
        # pyable's constructors take str only (a Path raises) and read the file at once.
        wrapper = getattr(module, _PYABLE_CLASSES[role])(filename=str(path))
        if not wrapper.isImageSet():
            # pyable skips missing paths silently and fails later with IndexError.
            raise RuntimeError(f'The file "{path}" does not exist.')
        image = wrapper.getImage()
    if role == ROLE_IMAGE:
        image = _as_float32(image)
    return image


def _read_by_sources(path: str | Path) -> bool:
    """DICOM series and float NIfTI: pyable would read them with SimpleITK's losing readers."""
    if sources.is_series(path):
        return True
    try:
        header = nifti.read_nifti_header(path) if nifti.is_nifti(path) else None
    except OSError:
        return False  # pyable reports the missing file
    return header is not None and header.datatype in nifti.FLOAT_DATATYPES


def resample(
    image: sitk.Image,
    grid: Grid,
    role: str,
    interpolator: str = LINEAR,
    transform: sitk.Transform | None = None,
    default_value: float = 0.0,
) -> sitk.Image:
    """``image`` sampled on ``grid`` at ``transform(point)``, in one interpolation.

    The transform follows ITK's convention (it maps a grid point to an image point), so it is
    used as given, never inverted. Voxels of ``grid`` outside the image get ``default_value``.

    Args:
        image: Source image (not modified).
        grid: Target grid (size/spacing/origin/direction in x,y,z order).
        role: ``"image"``, ``"roi"`` or ``"labelmap"``; ROIs and label maps use nearest.
        interpolator: Interpolator name for images.
        transform: Optional transform (may be composite or a displacement field).
        default_value: Value outside the image's field of view.

    Returns:
        A new image on ``grid`` with the pixel type of ``image``.

    Raises:
        ValueError: If ``role`` or ``interpolator`` is unknown.

    Example:
        >>> grid = Grid.from_image(reference)  # doctest: +SKIP
        >>> moved = resample(image, grid, 'image', 'linear', rigid)  # doctest: +SKIP
    """
    name = interpolator_for(role, interpolator)
    module = _pyable_module()
    explicit = transform is not None and not _apply_transform_keeps_semantics(image, name, default_value)
    if module is None or (explicit and not hasattr(module.Imaginable, _PYABLE_EXPLICIT_RESAMPLER)):
        return sitk.Resample(
            image,
            list(grid.size),
            transform if transform is not None else sitk.Transform(),
            SITK_INTERPOLATORS[name],
            grid.origin,
            grid.spacing,
            grid.direction,
            float(default_value),
            image.GetPixelID(),
            False,
        )
    # A fresh wrapper per call: pyable keeps a history of every step and shares images.
    wrapper = getattr(module, _PYABLE_CLASSES[role])(image=image)
    target = grid.empty_image()
    if transform is None:
        # Roiable/LabelMapable would copy the border label outward by default.
        wrapper.resampleOnTargetImage(
            target,
            interpolator=SITK_INTERPOLATORS[name],
            default_value=float(default_value),
            useNearestNeighborExtrapolator=False,
        )
    elif not explicit:
        wrapper.applyTransform(transform, target_image=target, interpolator=name, default_value=float(default_value))
    else:
        # applyTransform would use linear (unknown name) or nearest with a 0 fill (integer pixels):
        # resample through pyable's non-inverting registration path with explicit settings
        # (or through SimpleITK above when this pyable lacks it).
        wrapper.transformFromRegitration(
            transform,
            interpolator=SITK_INTERPOLATORS[name],
            reference_image=target,
            default_value=float(default_value),
            useNearestNeighborExtrapolator=False,
        )
    return wrapper.getImage()


def reorient(image: sitk.Image, code: str) -> sitk.Image:
    """``image`` with its index axes permuted and flipped to orientation ``code``, no interpolation.

    pyable's ``dicomOrient`` is this same SimpleITK filter, so both backends share it.

    Example:
        >>> reorient(image, 'RAS').GetDirection()  # doctest: +SKIP
        (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    """
    return sitk.DICOMOrient(image, code)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f'role must be one of {ROLES}, got {role!r}')


def _apply_transform_keeps_semantics(image: sitk.Image, name: str, default_value: float) -> bool:
    """Whether pyable's ``applyTransform`` honours ``name`` and ``default_value`` for ``image``."""
    if image.GetPixelID() in _INTEGER_PIXEL_IDS:
        return name == NEAREST and float(default_value) == 0.0
    return name in _PYABLE_TRANSFORM_INTERPOLATORS


def _as_float32(image: sitk.Image) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() > 1:
        wanted = sitk.sitkVectorFloat32
    else:
        wanted = sitk.sitkFloat32
    if image.GetPixelID() in (wanted, sitk.sitkFloat64, sitk.sitkVectorFloat64):
        return image
    return sitk.Cast(image, wanted)
