"""The Z,Y,X layout guard: put every image of a subject back in pyable's Z,Y,X order.

Our tensors are C x D x H x W with D, H, W the reference grid's z, y, x index axes, and the
affine's columns follow that order. TorchIO transforms that reorder axes (``ToCanonical``,
``ToOrientation``, ``Transpose``) leave a physically correct image in another layout. The guard
undoes that with permutations and flips of the data and of the affine's columns only: no
resampling, so values (and labels) are moved, never interpolated.

2-D subjects (C x 1 x H x W) are shown to TorchIO's own transforms in TorchIO's 2-D layout
(C x W x H x 1, the affine's columns reversed: exactly what ``tio.ScalarImage`` gives for the
2-D file), so that ``tio.RandomAffine``, ``tio.RandomElasticDeformation`` and ``tio.RandomFlip``
do what they do for TorchIO's 2-D images; the guard then restores Z,Y,X.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchio as tio

from ..constants import ID, LAYOUT_AXIS_TOLERANCE
from ..errors import PyableTioError, describe
from ..geometry.grid import Grid, affine_orientation
from ..plan import reference_grid
from .keep_grid import keep_grid

#: ``axis_mapping`` of an image already in Z,Y,X layout: no permutation, no flip.
_UNCHANGED = ((0, 1, 2), (False, False, False))
#: ``axis_mapping`` of a Z,Y,X image shown in TorchIO's order (W, H, D): the axes reversed.
_REVERSED = ((2, 1, 0), (False, False, False))


class LayoutError(PyableTioError, ValueError):
    """An image cannot be put back in Z,Y,X order by permuting and flipping its axes.

    Example:
        >>> ToZYX()(tio.Resample('other_oblique.nii.gz')(subject))  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        pyable_tio.transforms.layout.LayoutError: subject "sub-01": image "images": ...
    """


def zyx_directions(subject: tio.Subject) -> np.ndarray:
    """Unit RAS directions (3 x 3, one column per D, H, W axis) of the subject's Z,Y,X layout.

    They come from the subject's reference grid (its plan's, :func:`pyable_tio.plan.reference_grid`).

    Raises:
        LayoutError: the subject has no ``meta`` grid.

    Example:
        >>> zyx_directions(subject)[:, 0]  # RAS direction of the D (z) axis  # doctest: +SKIP
    """
    matrix = _reference_grid(subject).affine_zyx()[:3, :3]
    return matrix / np.linalg.norm(matrix, axis=0)


def _reference_grid(subject: tio.Subject) -> Grid:
    grid = reference_grid(subject)
    if grid is None:
        problem = (
            'no "meta" reference grid (size, spacing, origin, direction);'
            ' build subjects with subjects_from_manifest'
        )
        raise LayoutError(describe(_subject_id(subject), None, problem))
    return grid


def axis_mapping(affine: np.ndarray, directions: np.ndarray) -> tuple[tuple[int, ...], tuple[bool, ...]] | None:
    """How to reach ``directions`` from ``affine``'s axes by permuting and flipping.

    Args:
        affine: 4 x 4 voxel-to-RAS matrix of the current tensor axes.
        directions: 3 x 3 unit RAS directions wanted for the output axes (columns).

    Returns:
        ``(permutation, flips)``: output axis ``j`` is input axis ``permutation[j]``, reversed
        when ``flips[j]``; ``None`` when the axes are not a permutation of the wanted ones
        (e.g. after resampling onto another, oblique grid).

    Example:
        >>> axis_mapping(np.diag([1.0, 2.0, 3.0, 1.0]), np.eye(3)[:, ::-1])
        ((2, 1, 0), (False, False, False))
    """
    columns = np.asarray(affine, float)[:3, :3]
    norms = np.linalg.norm(columns, axis=0)
    if np.any(norms == 0):
        return None
    cosines = (columns / norms).T @ directions  # [input axis, output axis]
    permutation = tuple(int(i) for i in np.argmax(np.abs(cosines), axis=0))
    if sorted(permutation) != [0, 1, 2]:
        return None
    best = np.array([cosines[i, j] for j, i in enumerate(permutation)])
    if np.any(np.abs(np.abs(best) - 1) > LAYOUT_AXIS_TOLERANCE):
        return None
    return permutation, tuple(bool(c < 0) for c in best)


def reorder(
    data: torch.Tensor,
    affine: np.ndarray,
    permutation: tuple[int, ...],
    flips: tuple[bool, ...],
) -> tuple[torch.Tensor, np.ndarray]:
    """Permute and flip the spatial axes of a C x I x J x K tensor and its affine, exactly.

    Returns:
        The reordered tensor (a copy) and the affine mapping its voxels to the same RAS points.

    Example:
        >>> data, affine = reorder(torch.zeros(1, 2, 3, 4), np.eye(4), (2, 1, 0), (False,) * 3)
        >>> tuple(data.shape)
        (1, 4, 3, 2)
    """
    affine = np.asarray(affine, float)
    data = data.permute(0, *(p + 1 for p in permutation))
    new_affine = np.eye(4)
    new_affine[:3, 3] = affine[:3, 3]
    flip_dims = []
    for j, (axis, flip) in enumerate(zip(permutation, flips)):
        column = affine[:3, axis]
        if flip:
            # The new first voxel is the old last one along this axis.
            new_affine[:3, 3] += column * (data.shape[j + 1] - 1)
            column = -column
            flip_dims.append(j + 1)
        new_affine[:3, j] = column
    if flip_dims:
        data = torch.flip(data, flip_dims)
    return data.contiguous(), new_affine


def is_zyx(subject: tio.Subject) -> bool:
    """True when every image of the subject is in its Z,Y,X layout (axes not reordered).

    Example:
        >>> is_zyx(subject), is_zyx(tio.ToCanonical()(subject))  # doctest: +SKIP
        (True, False)
    """
    directions = zyx_directions(subject)
    return all(axis_mapping(image.affine, directions) == _UNCHANGED for image in subject.get_images(intensity_only=False))


def check_zyx(subject: tio.Subject) -> None:
    """Raise :class:`LayoutError` unless every image of the subject is in Z,Y,X layout.

    Example:
        >>> check_zyx(dataset[0])  # doctest: +SKIP
    """
    directions = zyx_directions(subject)
    for name, image in subject.get_images_dict(intensity_only=False).items():
        mapping = axis_mapping(image.affine, directions)
        if mapping != _UNCHANGED:
            raise LayoutError(_layout_problem(subject, name, image, mapping))


def _reorder_image(image: tio.Image, mapping: tuple[tuple[int, ...], tuple[bool, ...]]) -> None:
    """Permute and flip ``image``'s data and affine in place (:func:`reorder`)."""
    data, affine = reorder(image.data, image.affine, *mapping)
    image.set_data(data)
    image.affine = affine


class _Reordering(tio.SpatialTransform):
    """A step that only permutes/flips axes; recorded in the history only when it changed something.

    A no-op step stays out of the history, so ``apply_inverse_transform`` neither warns about it
    nor undoes what never happened.
    """

    _reordered = False

    def _add_transform_to_subject_history(self, subject: tio.Subject) -> None:
        if self._reordered:
            super()._add_transform_to_subject_history(subject)


class ToZYX(_Reordering):
    """Put every image back in the subject's Z,Y,X layout, by permuting and flipping axes only.

    Undoes ``tio.ToCanonical``, ``tio.ToOrientation``, ``tio.Transpose`` (and any other pure
    reordering): data and affine columns are permuted/flipped so that axis 0, 1, 2 are again the
    reference grid's z, y, x (D, H, W) with the same directions. Nothing is resampled. Images
    already in Z,Y,X are left untouched, and a guard that changed nothing is not recorded in the
    subject's history.

    Args:
        **kwargs: See ``tio.Transform``.

    Raises:
        LayoutError: the subject has no ``meta`` grid, or an image's axes are not a permutation
            of the Z,Y,X axes (e.g. it was resampled onto an oblique grid); the message names the
            subject, the image and the orientations.

    Example:
        >>> import torchio as tio
        >>> from pyable_tio.transforms import ToZYX
        >>> transform = tio.Compose([tio.ToCanonical(), ToZYX()])  # doctest: +SKIP
        >>> transform(subject)['images'].data.shape == subject['images'].data.shape  # doctest: +SKIP
        True
    """

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        self._reordered = False
        directions = zyx_directions(subject)
        for name, image in subject.get_images_dict(intensity_only=False).items():  # all of them, always
            mapping = axis_mapping(image.affine, directions)
            if mapping is None:
                raise LayoutError(_layout_problem(subject, name, image, mapping))
            if mapping == _UNCHANGED:
                continue
            _reorder_image(image, mapping)
            self._reordered = True
        return subject

    def is_invertible(self) -> bool:
        """False: the guard is not undone by ``Subject.apply_inverse_transform``."""
        return False


class _Reverse2D(_Reordering):
    """Reverse the spatial axes (and the affine's columns) of every image when ``_shows`` holds.

    No resampling: each voxel keeps its world point.
    """

    def _shows(self, image: tio.Image, directions: np.ndarray) -> bool:
        raise NotImplementedError

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        self._reordered = False
        images = subject.get_images(intensity_only=False)
        if reference_grid(subject) is None or not images:
            return subject
        directions = zyx_directions(subject)
        if all(self._shows(image, directions) for image in images):
            for image in images:
                _reorder_image(image, _REVERSED)
            self._reordered = True
        return subject

    def is_invertible(self) -> bool:
        """True: the other 2-D step undoes it."""
        return True


class ToTorchIO2D(_Reverse2D):
    """Show a 2-D Z,Y,X subject (C x 1 x H x W) in TorchIO's 2-D layout (C x W x H x 1).

    The spatial axes and the affine's columns are reversed (no resampling): each voxel keeps its
    world point, and tensors and affines are those ``tio.ScalarImage``/``tio.LabelMap`` read
    from the 2-D files. Other subjects (3-D, or not in Z,Y,X layout) are left as they are. A
    step that changed nothing is not recorded; the inverse is :class:`FromTorchIO2D`.

    Example:
        >>> ToTorchIO2D()(subject_2d)['images'].shape  # (1, 1, 16, 20) shown as  # doctest: +SKIP
        (1, 20, 16, 1)
    """

    def _shows(self, image: tio.Image, directions: np.ndarray) -> bool:
        shape = image.spatial_shape
        return shape[0] == 1 and min(shape[1:]) > 1 and axis_mapping(image.affine, directions) == _UNCHANGED

    def inverse(self) -> FromTorchIO2D:
        """The step back to Z,Y,X."""
        return FromTorchIO2D(**self._get_base_args())


class FromTorchIO2D(_Reverse2D):
    """Put a subject shown in TorchIO's 2-D layout (C x W x H x 1) back in Z,Y,X (C x 1 x H x W).

    Acts only when every image has its axes exactly reversed with respect to the Z,Y,X grid and a
    last spatial size of 1; anything else is left to :class:`ToZYX`. The inverse is
    :class:`ToTorchIO2D`.

    Example:
        >>> FromTorchIO2D()(ToTorchIO2D()(subject_2d))['images'].shape  # doctest: +SKIP
        (1, 1, 16, 20)
    """

    def _shows(self, image: tio.Image, directions: np.ndarray) -> bool:
        return image.spatial_shape[2] == 1 and axis_mapping(image.affine, directions) == _REVERSED

    def inverse(self) -> ToTorchIO2D:
        """The step back to TorchIO's 2-D layout."""
        return ToTorchIO2D(**self._get_base_args())


def in_torchio_layout(transform: Any) -> Any:
    """``transform`` with each TorchIO transform in it seeing 2-D subjects in TorchIO's 2-D layout.

    Every ``tio.Transform`` that is not pyable-tio's own (those work on C x 1 x H x W) is run
    between :class:`ToTorchIO2D` and :class:`FromTorchIO2D`; ``tio.Compose``/``tio.OneOf`` are
    rebuilt around their wrapped items (the originals are not modified). ``tio.MonaiAdapter``
    and plain callables are returned as they are. On 3-D subjects the steps change nothing.

    Example:
        >>> flip = in_torchio_layout(tio.RandomFlip())  # axis 0 is W (x) on 2-D subjects, as in TorchIO
    """
    if isinstance(transform, tio.Compose):
        rebuilt = copy.copy(transform)
        rebuilt.transforms = [in_torchio_layout(item) for item in transform.transforms]
        return rebuilt
    if isinstance(transform, tio.OneOf):
        rebuilt = copy.copy(transform)
        rebuilt.transforms_dict = {in_torchio_layout(t): p for t, p in transform.transforms_dict.items()}
        return rebuilt
    ours = type(transform).__module__.split('.')[0] == 'pyable_tio'
    if not isinstance(transform, tio.Transform) or ours or isinstance(transform, tio.MonaiAdapter):
        return transform
    # In place (copy=False): the enclosing Compose already copied the subject once.
    return tio.Compose([ToTorchIO2D(copy=False), transform, FromTorchIO2D(copy=False)], copy=False)


def with_layout_guard(transform: Callable | None) -> Callable | None:
    """``transform`` followed by :class:`ToZYX`, so its outputs are always Z,Y,X.

    TorchIO's own transforms in it see 2-D subjects in TorchIO's 2-D layout
    (:func:`in_torchio_layout`), so they stay in the slice plane.
    MONAI augmentations inside it (``tio.MonaiAdapter``) keep the subject's grid
    (:func:`keep_grid`).

    Args:
        transform: A TorchIO transform or any callable taking and returning a subject; ``None``.

    Returns:
        ``None`` for ``None``; a ``tio.Compose`` for TorchIO transforms (history kept); else a
        picklable callable.

    Example:
        >>> guarded = with_layout_guard(tio.ToCanonical())  # doctest: +SKIP
    """
    if transform is None or isinstance(transform, ToZYX):
        return transform
    transform = keep_grid(transform)
    if isinstance(transform, tio.Transform):
        return tio.Compose([in_torchio_layout(transform), ToZYX()])
    return _Guarded(transform)


class _Guarded:
    """A plain callable followed by the layout guard (picklable for DataLoader workers)."""

    def __init__(self, transform: Callable[[Any], Any]):
        self.transform = transform
        self.guard = ToZYX()

    def __call__(self, subject: tio.Subject) -> tio.Subject:
        return self.guard(self.transform(subject))


def _subject_id(subject: Any) -> str | None:
    return subject.get(ID) if isinstance(subject, dict) else None


def _layout_problem(subject: tio.Subject, name: str, image: tio.Image, mapping: Any) -> str:
    found = affine_orientation(image.affine)
    wanted = affine_orientation(_reference_grid(subject).affine_zyx())
    if mapping is None:
        problem = (
            f'axes with orientation {found} are not a permutation of the Z,Y,X axes ({wanted}); '
            'the transform resampled it onto another grid, so ToZYX cannot restore it without '
            'interpolation: resample onto the subject grid instead (e.g. tio.Resample(<image of the subject>))'
        )
    else:
        problem = f'axes are in orientation {found}, not Z,Y,X ({wanted}); append pyable_tio.transforms.ToZYX()'
    return describe(_subject_id(subject), f'image "{name}"', problem)
