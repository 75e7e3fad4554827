"""Predictions back to the native grid of a subject's source file, and saved with its header.

The reader resampled each file onto the subject's grid through the file's transform ``T``
(ITK convention: grid point -> file point), recorded in the subject's plan
(:class:`pyable_tio.plan.SubjectPlan`, which every copy of the subject carries). The
prediction lives on that grid, so its native version samples it at ``T^-1(p)`` for every
voxel ``p`` of the file's own grid: one interpolation, nearest-neighbour for labels, linear
for probabilities.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio
from torchio.transforms.preprocessing.label.label_transform import LabelTransform

from ..geometry import registration
from ..io.atomic import atomic_path
from ..io.backend import ROLE_IMAGE, SITK_INTERPOLATORS
from ..constants import ID, IMAGES, ITEM_IMAGES, ITEM_LABELMAPS, ITEM_ROIS, LINEAR, META, NATIVE_DEFAULT_VALUE, NEAREST
from ..errors import PyableTioError, describe, short_error
from ..geometry.grid import Grid, planar_grid, ras_affine_to_grid, read_header
from ..plan import PlanEntry, SubjectPlan, plan_of
from ..reader import GridReader

#: A prediction on the subject's grid: C x D x H x W tensor or array, or a ``tio.Image``.
Prediction = Union[torch.Tensor, np.ndarray, tio.Image]
#: Which source file: a subject key, a file path, or ``(field, index)`` such as ``("images", 1)``.
Target = Union[str, os.PathLike, tuple]


#: Transforms without an inverse that keep every voxel's physical position and record the new
#: grid in the affine (``ToZYX`` is pyable-tio's layout guard): resampling by the affine undoes them.
GEOMETRY_IN_AFFINE = frozenset(
    {'Resample', 'Resize', 'ToCanonical', 'ToOrientation', 'EnsureShapeMultiple', 'Crop', 'Pad', 'CropOrPad', 'ToZYX'}
)

#: The fields of ``meta['source_paths']`` a ``(field, index)`` target may name.
_FIELDS = (ITEM_IMAGES, ITEM_ROIS, ITEM_LABELMAPS)


class NativeSpaceError(PyableTioError, ValueError):
    """A prediction cannot be mapped back to a source file's native grid.

    Example:
        >>> to_native(labels, subject, target='image_1')  # B-spline transform  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        pyable_tio.inference.native.NativeSpaceError: subject "sub-01": ... BSplineTransform has no inverse
    """


def to_native(
    prediction: Prediction,
    subject: tio.Subject,
    target: Target | None = None,
    interpolator: str | None = None,
    default_value: float = NATIVE_DEFAULT_VALUE,
    original: tio.Subject | None = None,
) -> sitk.Image:
    """Map a prediction on the subject's grid onto the native grid of one of its source files.

    The exact inverse of what the reader did for ``target``: its registration transforms
    (from the subject's plan, :func:`pyable_tio.plan.plan_of`, so whatever a transform did to
    the subject's ``tio.Image`` objects) are composed and inverted, and the prediction is
    resampled once onto the file's own grid.
    A subject that went through invertible TorchIO transforms is first brought back with
    TorchIO's inverse (``Subject.get_inverse_transform``, intensity transforms ignored); the
    prediction's own affine locates it, so crops, pads and resamplings need no inverse.

    Args:
        prediction: C x D x H x W (Z,Y,X) tensor or array on the subject's current grid
            (2-D subjects: C x 1 x H x W), or a ``tio.Image`` or a MONAI ``MetaTensor``
            (their affine is used, so they may lie on a crop or another grid).
        subject: The ``tio.Subject`` the prediction was made on (from pyable-tio).
        target: The source file whose grid to use: a subject key (``"labelmap_0"``,
            ``"images"`` = its first file), a path listed in ``meta['source_paths']``, or
            ``(field, index)`` with field ``"images"``, ``"rois"`` or ``"labelmaps"``.
            Default: the reference image (``meta['reference_used']``) if it is one of the
            subject's files, else the first image.
        interpolator: ``"nearest"``, ``"linear"``, ... Default: nearest for a ``tio.LabelMap``
            or an integer/bool prediction (labels, argmax), linear for floats (probabilities).
        default_value: Value of native voxels outside the subject grid's field of view.
        original: The same subject before TorchIO transforms, whose plan is used when
            ``subject`` carries none (e.g. a ``tio.Subject`` rebuilt by hand from its images).

    Returns:
        A SimpleITK image with the target file's size, spacing, origin and direction; C > 1
        channels give a vector image. Integer predictions keep their type (int64 -> int32,
        bool -> uint8); label predictions sent to a ROI or label map file take its pixel type.

    Raises:
        NativeSpaceError: unknown target, prediction shape not on the subject's grid, a
            transform without an inverse (e.g. B-spline), label values the target's pixel
            type cannot hold.

    Example:
        >>> native = to_native(labels, subject, target='labelmap_0')  # doctest: +SKIP
        >>> sitk.GetArrayFromImage(native).shape  # the label file's Z, Y, X  # doctest: +SKIP
    """
    subject_id = str(subject.get(ID, None))
    plan = _plan(subject, original)
    entry = _target_entry(plan, target, subject_id)
    path, key = entry.source, entry.key
    where = f'target "{key}": file {path}'
    image = subject.get(key)
    image = image if isinstance(image, tio.Image) else None
    tensor, affine, is_label = _prediction_tensor(prediction, subject, key, image)
    grid = _prediction_grid(tensor, affine, plan.grid, subject_id)
    if interpolator is None:
        interpolator = NEAREST if is_label or not tensor.is_floating_point() else LINEAR
    if interpolator not in SITK_INTERPOLATORS:
        raise ValueError(f'interpolator must be one of {sorted(SITK_INTERPOLATORS)}, got {interpolator!r}')
    if interpolator != NEAREST and not tensor.is_floating_point():
        tensor = tensor.float()  # interpolate, do not truncate
    moving = _to_sitk(tensor, grid)
    header = read_header(path)
    inverse = _inverse_transform(entry, plan.grid.dimension, subject_id, where)
    pixel_id = _output_pixel_id(moving, header, entry.role, interpolator, tensor, subject_id, where)
    native = sitk.Resample(
        moving,
        list(header.GetSize()),
        inverse,
        SITK_INTERPOLATORS[interpolator],
        header.GetOrigin(),
        header.GetSpacing(),
        header.GetDirection(),
        float(default_value),
        moving.GetPixelID(),
        False,
    )
    if native.GetPixelID() != pixel_id:
        native = sitk.Cast(native, pixel_id)
    return native


def save_prediction(
    prediction: Prediction,
    subject: tio.Subject,
    path: str | os.PathLike,
    target: Target | None = None,
    interpolator: str | None = None,
    default_value: float = NATIVE_DEFAULT_VALUE,
    compress: bool = True,
    original: tio.Subject | None = None,
) -> Path:
    """Write a prediction on the native grid of one of the subject's files.

    The file has the target's exact size, spacing, origin and direction, and, for a label
    prediction sent to a ROI or label map, the target's pixel type. It is written to a
    temporary name first, so a failure leaves nothing half-written at ``path``.

    Args:
        prediction: See :func:`to_native`.
        subject: See :func:`to_native`.
        path: Output file; its suffix sets the format (``.nii.gz``, ``.mha``, ``.nrrd``, ...).
        target: See :func:`to_native`.
        interpolator: See :func:`to_native`.
        default_value: See :func:`to_native`.
        compress: Ask the writer to compress (formats that support it).
        original: See :func:`to_native`.

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> save_prediction(labels, subject, 'sub-01_seg.nii.gz', target='labelmap_0')  # doctest: +SKIP
    """
    native = to_native(prediction, subject, target, interpolator, default_value, original)
    path = Path(path)
    try:
        with atomic_path(path, keep_suffix=True) as partial:
            sitk.WriteImage(native, str(partial), useCompression=compress)
    except RuntimeError as error:
        raise NativeSpaceError(f'could not write {path}: {short_error(error)}') from None
    return path


def _plan(subject: tio.Subject, original: tio.Subject | None) -> SubjectPlan:
    """The subject's plan (or the original's); for a subject assembled by hand, its readers' entries."""
    plan = plan_of(subject) or plan_of(original)
    if plan is not None:
        return plan
    entries, grid = [], None
    for key, image in subject.get_images_dict(intensity_only=False).items():
        if isinstance(image.reader, GridReader):
            grid = image.reader.grid
            entries += [dataclasses.replace(image.reader.entry(p), key=key) for p in _paths(image)]
    subject_id = str(subject.get(ID, None))
    if grid is None:
        raise NativeSpaceError(describe(subject_id, None, 'not a pyable-tio subject (no plan, no GridReader)'))
    return SubjectPlan(subject_id, grid, tuple(entries), str(subject.get(META, {}).get('reference_used', '')))


def _target_entry(plan: SubjectPlan, target: Target | None, subject_id: str) -> PlanEntry:
    """The plan entry of ``target``: a subject key, a source path, ``(field, index)``, or the default."""
    if target is None:
        found = plan.entry_of_source(plan.reference_used) if plan.reference_used else None
        found = found or plan.entry_of_field(IMAGES, 0) or plan.entries[0]
    elif isinstance(target, tuple):
        found = plan.entry_of_field(*target) if len(target) == 2 and target[0] in _FIELDS else None
    elif isinstance(target, str) and target in plan.keys():
        found = plan.entry_of_key(target)
    else:
        found = plan.entry_of_source(target)
    if found is None:
        problem = f'target {target!r} is not a subject key {sorted(plan.keys())}, a source path or (field, index)'
        raise NativeSpaceError(describe(subject_id, None, problem))
    return found


def _paths(image: tio.Image) -> list[Path]:
    path = image.path
    if path is None:
        return []
    return [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]


def _prediction_tensor(
    prediction: Prediction, subject: tio.Subject, key: str, image: tio.Image | None
) -> tuple[torch.Tensor, np.ndarray, bool]:
    """The prediction as a 4-D tensor on the subject's original grid, with its affine."""
    located = isinstance(prediction, tio.Image) or _is_meta_tensor(prediction)
    if image is None and not located:
        problem = f'no image "{key}" in the subject to locate a bare tensor; pass a tio.Image with its affine'
        raise NativeSpaceError(describe(str(subject.get(ID, None)), None, problem))
    if isinstance(prediction, tio.Image):
        tensor, affine = prediction.data, prediction.affine
        is_label = isinstance(prediction, tio.LabelMap)
    elif located:
        # A MONAI MetaTensor (e.g. from pt.monai_dataset, after Invertd or a crop): its affine
        # (index to RAS, as TorchIO's) locates it.
        tensor, affine, is_label = prediction.as_tensor(), prediction.affine.detach().cpu().numpy(), False
    else:
        if isinstance(prediction, np.ndarray):
            prediction = torch.from_numpy(np.ascontiguousarray(prediction))
        tensor = torch.as_tensor(prediction)
        affine, is_label = image.affine, False
    tensor = tensor.detach().cpu()
    subject_id = str(subject.get(ID, None))
    if tensor.ndim != 4:
        problem = f'prediction must be C x D x H x W, got shape {tuple(tensor.shape)}'
        raise NativeSpaceError(describe(subject_id, None, problem))
    if not located and tuple(tensor.shape[1:]) != tuple(image.spatial_shape):
        problem = (
            f'prediction spatial shape {tuple(tensor.shape[1:])} is not the subject grid\'s (D, H, W)'
            f' {tuple(image.spatial_shape)}; pass a tio.Image with its own affine for other grids'
        )
        raise NativeSpaceError(describe(subject_id, None, problem))
    history = getattr(subject, 'applied_transforms', [])
    if history:
        tensor, affine = _undo_history(tensor, affine, is_label, subject, key)
    return tensor, np.asarray(affine, dtype=float), is_label


def _is_meta_tensor(prediction: Any) -> bool:
    """A ``monai.data.MetaTensor``, recognised without importing MONAI."""
    return isinstance(prediction, torch.Tensor) and hasattr(prediction, 'affine') and hasattr(prediction, 'as_tensor')


def _undo_history(
    tensor: torch.Tensor, affine: np.ndarray, is_label: bool, subject: tio.Subject, key: str
) -> tuple[torch.Tensor, np.ndarray]:
    """Apply the inverse of the subject's TorchIO history to the prediction."""
    subject_id = str(subject.get(ID, None))
    for transform in subject.get_applied_transforms(ignore_intensity=True):
        name = transform.name
        if transform.is_invertible() or name in GEOMETRY_IN_AFFINE:
            continue
        if isinstance(transform, LabelTransform):
            warnings.warn(f'{name} cannot be inverted: label values are not mapped back', RuntimeWarning, stacklevel=3)
            continue
        problem = (
            f'TorchIO transform {name} has no inverse and may have moved the voxels; predict'
            ' on the subject before that transform (e.g. a dataset without augmentation)'
        )
        raise NativeSpaceError(describe(subject_id, None, problem))
    label = is_label or not tensor.is_floating_point()
    image_class = tio.LabelMap if label else tio.ScalarImage
    # Same key as the target so that include/exclude of the recorded transforms still apply.
    carrier = tio.Subject({key: image_class(tensor=tensor, affine=affine)})
    carrier.applied_transforms = list(subject.applied_transforms)
    inverse = carrier.get_inverse_transform(warn=False, ignore_intensity=True)
    restored = inverse(carrier)
    return restored[key].data, restored[key].affine


def _prediction_grid(tensor: torch.Tensor, affine: np.ndarray, grid: Grid, subject_id: str) -> Grid:
    """The grid the prediction lives on: the subject grid unless its affine says otherwise."""
    spatial = tuple(tensor.shape[1:])
    found = ras_affine_to_grid(affine, spatial)
    if grid.dimension == 3:
        return grid if found.matches(grid) else found
    if found.matches(grid.as_3d()):
        return grid
    planar = planar_grid(found)
    if planar is None:
        problem = f'prediction of shape {tuple(tensor.shape)} is not a C x 1 x H x W slice of the 2-D grid'
        raise NativeSpaceError(describe(subject_id, None, problem))
    return planar


def _to_sitk(tensor: torch.Tensor, grid: Grid) -> sitk.Image:
    array = tensor.numpy()
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.int64:
        array = array.astype(np.int32)  # what ITK file formats hold, as TorchIO does
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    if grid.dimension == 2:
        array = array[:, 0]
    channels = array.shape[0]
    if channels == 1:
        image = sitk.GetImageFromArray(array[0])
    else:
        image = sitk.GetImageFromArray(np.moveaxis(array, 0, -1), isVector=True)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def _inverse_transform(entry: PlanEntry, dimension: int, subject_id: str, where: str) -> sitk.Transform:
    """``T^-1`` for ``T = T_1 o ... o T_n`` (``CompositeTransform([T_1, ..., T_n])``): the entries
    reversed, each one inverted.

    Entry by entry, so displacement fields are inverted as fields (``InvertDisplacementField``,
    an iterative approximation) while matrices and other ITK transforms use ``GetInverse``.
    """
    entries = entry.transforms
    if not entries:
        return sitk.Transform(dimension, sitk.sitkIdentity)
    inverted = [dataclasses.replace(entry, invert=not entry.invert) for entry in reversed(entries)]
    try:
        inverse = registration.compose(inverted)
    except ValueError as error:
        problem = f'cannot send the prediction back: {error} (or use a target without this transform)'
        raise NativeSpaceError(describe(subject_id, where, problem)) from None
    assert inverse is not None
    return inverse


def _output_pixel_id(
    moving: sitk.Image,
    header: sitk.ImageFileReader,
    role: str,
    interpolator: str,
    tensor: torch.Tensor,
    subject_id: str,
    where: str,
) -> int:
    same_components = header.GetNumberOfComponents() == moving.GetNumberOfComponentsPerPixel()
    if interpolator != NEAREST or role == ROLE_IMAGE or not same_components:
        return moving.GetPixelID()
    pixel_id = header.GetPixelID()
    values = tensor.numpy()
    if values.size and np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        return moving.GetPixelID()  # non-integer values: keep them rather than truncate
    name = sitk.GetPixelIDValueAsString(pixel_id)
    dtype = _NUMPY_OF_SITK.get(pixel_id)
    if dtype is None:
        return moving.GetPixelID()
    if values.size:
        low, high = values.min(), values.max()
        info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
        if low < info.min or high > info.max:
            problem = f'label values {low}..{high} do not fit the target pixel type {name}'
            raise NativeSpaceError(describe(subject_id, where, problem))
    return pixel_id


_NUMPY_OF_SITK = {
    sitk.sitkUInt8: np.uint8,
    sitk.sitkInt8: np.int8,
    sitk.sitkUInt16: np.uint16,
    sitk.sitkInt16: np.int16,
    sitk.sitkUInt32: np.uint32,
    sitk.sitkInt32: np.int32,
    sitk.sitkUInt64: np.uint64,
    sitk.sitkInt64: np.int64,
    sitk.sitkFloat32: np.float32,
    sitk.sitkFloat64: np.float64,
}


def native_grid(subject: tio.Subject, target: Target | None = None) -> Grid:
    """The native grid (x,y,z order) of a subject's source file, read from its header.

    Example:
        >>> native_grid(subject, 'labelmap_0').spacing  # doctest: +SKIP
    """
    entry = _target_entry(_plan(subject, None), target, str(subject.get(ID, None)))
    return Grid.from_image(read_header(entry.source))

