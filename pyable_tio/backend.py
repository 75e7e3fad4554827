"""The one seam between pyable and the package's own SimpleITK path.

Both backends load a file and resample it onto a grid through an optional transform, in a
single interpolation, with the same semantics: the interpolator is chosen by the entry's role
(never by pyable class or pixel type), voxels outside the source's field of view get
``default_value`` (no nearest-neighbour extrapolation), and images are resampled in float32 so
that integer scanners' data are interpolated, not truncated. pyable is imported lazily (it pulls
in vtk, matplotlib and scikit-image); set ``PYABLE_TIO_BACKEND=simpleitk`` to force the
SimpleITK path.
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path
from types import ModuleType

import SimpleITK as sitk

from .constants import LINEAR, NEAREST
from .geometry import Grid

ROLE_IMAGE = 'image'
ROLE_ROI = 'roi'
ROLE_LABELMAP = 'labelmap'
ROLES = (ROLE_IMAGE, ROLE_ROI, ROLE_LABELMAP)

SITK_INTERPOLATORS = {
    LINEAR: sitk.sitkLinear,
    NEAREST: sitk.sitkNearestNeighbor,
    'bspline': sitk.sitkBSpline,
    'gaussian': sitk.sitkGaussian,
    'lanczos': sitk.sitkLanczosWindowedSinc,
}

#: pyable class used for each role (the class also sets pyable's own defaults).
_PYABLE_CLASSES = {ROLE_IMAGE: 'SITKImaginable', ROLE_ROI: 'Roiable', ROLE_LABELMAP: 'LabelMapable'}


@functools.lru_cache(maxsize=1)
def _pyable_module() -> ModuleType | None:
    if os.environ.get('PYABLE_TIO_BACKEND', '').lower() == 'simpleitk':
        return None
    os.environ.setdefault('MPLBACKEND', 'Agg')
    try:
        return importlib.import_module('pyable.imaginable')
    except Exception:  # noqa: BLE001 - pyable's import chain can fail in many ways
        return None


def pyable_available() -> bool:
    """True when ``pyable.imaginable`` imports (and is not disabled)."""
    return _pyable_module() is not None


def active_backend() -> str:
    """``"pyable"`` or ``"simpleitk"``."""
    return 'pyable' if pyable_available() else 'simpleitk'


def interpolator_for(role: str, requested: str) -> str:
    """ROIs and label maps are always nearest-neighbour; images use ``requested``."""
    if role not in ROLES:
        raise ValueError(f'role must be one of {ROLES}, got {role!r}')
    if requested not in SITK_INTERPOLATORS:
        raise ValueError(f'interpolator must be one of {sorted(SITK_INTERPOLATORS)}, got {requested!r}')
    return requested if role == ROLE_IMAGE else NEAREST


def load(path: str | Path, role: str) -> sitk.Image:
    """Read a file as a SimpleITK image (images as float32 when they will be interpolated)."""
    module = _pyable_module()
    if module is None:
        image = sitk.ReadImage(str(path))
    else:
        image = getattr(module, _PYABLE_CLASSES[role])(filename=str(path)).getImage()
    if role == ROLE_IMAGE:
        image = _as_float32(image)
    return image


def resample(
    image: sitk.Image,
    grid: Grid,
    role: str,
    interpolator: str = LINEAR,
    transform: sitk.Transform | None = None,
    default_value: float = 0.0,
) -> sitk.Image:
    """``image`` sampled on ``grid`` at ``transform(point)`` (ITK: grid point to image point)."""
    name = interpolator_for(role, interpolator)
    module = _pyable_module()
    if module is None:
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
    pyable_image = getattr(module, _PYABLE_CLASSES[role])(image=image)
    target = grid.empty_image()
    if transform is None:
        pyable_image.resampleOnTargetImage(
            target,
            interpolator=SITK_INTERPOLATORS[name],
            default_value=default_value,
            useNearestNeighborExtrapolator=False,
        )
    else:
        pyable_image.applyTransform(
            transform, target_image=target, interpolator=name, default_value=default_value
        )
    return pyable_image.getImage()


def _as_float32(image: sitk.Image) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() > 1:
        wanted = sitk.sitkVectorFloat32
    else:
        wanted = sitk.sitkFloat32
    if image.GetPixelID() in (wanted, sitk.sitkFloat64, sitk.sitkVectorFloat64):
        return image
    return sitk.Cast(image, wanted)
