"""2-D subjects on the Z,Y,X layout: TorchIO's random spatial transforms kept in plane.

Our 2-D images are C x 1 x H x W; TorchIO's 2-D test (``Image.is_2d``) looks for a last axis
of size 1 (C x W x H x 1), so on our layout ``tio.RandomAffine`` and
``tio.RandomElasticDeformation`` treat a slice as a thin 3-D volume: they rotate, scale and
displace it out of its plane and the slice fills with background. These subclasses do the same
as TorchIO's for 3-D subjects and, for subjects whose images all have D == 1, keep only the
in-plane part of the random parameters (what TorchIO does for its own 2-D layout).
``RandomAnisotropy`` and ``RandomGhosting`` likewise never pick the singleton D axis, and
``RandomMotion`` keeps its rigid motions in plane.
"""

from __future__ import annotations

import numpy as np
import torchio as tio
from torchio.transforms.augmentation.spatial.random_elastic_deformation import ElasticDeformation

from ..constants import SLICE_NORMAL_AXIS


def slice_normal_axis(subject: tio.Subject) -> int | None:
    """World axis (0, 1, 2 = RAS x, y, z) normal to a 2-D Z,Y,X subject; ``None`` if not 2-D.

    A subject is 2-D on our layout when every image has D == 1 and H, W > 1.

    Raises:
        ValueError: the slices are 2-D but not perpendicular to a world axis.

    Example:
        >>> slice_normal_axis(subject_2d)  # z, for slices read from 2-D files  # doctest: +SKIP
        2
    """
    images = subject.get_images(intensity_only=False)
    if not images or not all(image.spatial_shape[0] == 1 and min(image.spatial_shape[1:]) > 1 for image in images):
        return None
    normal = np.asarray(images[0].affine)[:3, 0]
    normal = normal / np.linalg.norm(normal)
    axis = int(np.argmax(np.abs(normal)))
    if abs(abs(normal[axis]) - 1) > 1e-3:
        raise ValueError(
            f'subject "{subject.get("id")}": 2-D slices with normal {np.round(normal, 3).tolist()} (RAS) are not'
            ' perpendicular to a world axis; in-plane random transforms need axis-aligned slices'
        )
    return axis


class RandomAffine(tio.RandomAffine):
    """``tio.RandomAffine`` that keeps 2-D Z,Y,X subjects (C x 1 x H x W) in their plane.

    For 2-D subjects the scaling and translation along the slice normal are dropped and only the
    rotation about the normal is kept (TorchIO does the same for its own C x W x H x 1 images).
    Same arguments as ``tio.RandomAffine``; 3-D subjects are transformed exactly as TorchIO does.

    Example:
        >>> from pyable_tio.transforms import RandomAffine
        >>> augmented = RandomAffine(degrees=15, scales=0.1)(subject_2d)  # doctest: +SKIP
    """

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        normal = slice_normal_axis(subject)
        if normal is None:
            return super().apply_transform(subject)
        scales, degrees, translation = (
            np.asarray(p, float).copy()
            for p in self.get_params(self.scales, self.degrees, self.translation, self.isotropic)
        )
        scales[normal] = 1.0
        translation[normal] = 0.0
        degrees[[axis for axis in range(3) if axis != normal]] = 0.0
        transform = tio.Affine(
            scales=tuple(scales.tolist()),
            degrees=tuple(degrees.tolist()),
            translation=tuple(translation.tolist()),
            center=self.center,
            default_pad_value=self.default_pad_value,
            default_pad_label=self.default_pad_label,
            image_interpolation=self.image_interpolation,
            label_interpolation=self.label_interpolation,
            check_shape=self.check_shape,
            **self._get_base_args(),
        )
        transformed = transform(subject)
        assert isinstance(transformed, tio.Subject)
        return transformed


class RandomElasticDeformation(tio.RandomElasticDeformation):
    """``tio.RandomElasticDeformation`` that keeps 2-D Z,Y,X subjects in their plane.

    For 2-D subjects the displacement along the slice normal is set to zero. Same arguments as
    ``tio.RandomElasticDeformation``; 3-D subjects are deformed exactly as TorchIO does.

    Example:
        >>> from pyable_tio.transforms import RandomElasticDeformation
        >>> augmented = RandomElasticDeformation(max_displacement=3)(subject_2d)  # doctest: +SKIP
    """

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        normal = slice_normal_axis(subject)
        if normal is None:
            return super().apply_transform(subject)
        control_points = self.get_params(self.num_control_points, self.max_displacement, self.num_locked_borders)
        control_points[..., normal] = 0  # components are LPS x, y, z: the same axis index as RAS
        transform = ElasticDeformation(
            control_points=control_points,
            max_displacement=self.max_displacement,
            image_interpolation=self.image_interpolation,
            label_interpolation=self.label_interpolation,
            **self._get_base_args(),
        )
        transformed = transform(subject)
        assert isinstance(transformed, tio.Subject)
        return transformed


def _without_depth_axis(axes: tuple) -> tuple:
    kept = tuple(axis for axis in axes if axis != 0)
    if not kept:
        raise ValueError(f'on a 2-D subject (C x 1 x H x W) the axes {axes} leave no in-plane axis; use 1 (H) or 2 (W)')
    return kept


class _InPlaneAxes:
    """Mixin: on 2-D Z,Y,X subjects, run the transform with the singleton D axis removed from ``axes``."""

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        if slice_normal_axis(subject) is None:
            return super().apply_transform(subject)
        axes = self.axes
        self.axes = _without_depth_axis(tuple(axes))
        try:
            return super().apply_transform(subject)
        finally:
            self.axes = axes


class RandomAnisotropy(_InPlaneAxes, tio.RandomAnisotropy):
    """``tio.RandomAnisotropy`` that never picks the singleton D axis of 2-D Z,Y,X subjects.

    Same arguments as ``tio.RandomAnisotropy`` (``axes`` are tensor axes: 0 = D, 1 = H, 2 = W);
    on 2-D subjects axis 0 is dropped, as TorchIO drops its singleton axis 2.

    Example:
        >>> from pyable_tio.transforms import RandomAnisotropy
        >>> augmented = RandomAnisotropy(downsampling=(1.5, 4))(subject_2d)  # doctest: +SKIP
    """


class RandomGhosting(_InPlaneAxes, tio.RandomGhosting):
    """``tio.RandomGhosting`` that never picks the singleton D axis of 2-D Z,Y,X subjects.

    Same arguments as ``tio.RandomGhosting`` (integer ``axes`` are tensor axes: 0 = D, 1 = H,
    2 = W).

    Example:
        >>> from pyable_tio.transforms import RandomGhosting
        >>> augmented = RandomGhosting(num_ghosts=(2, 6))(subject_2d)  # doctest: +SKIP
    """


class RandomMotion(tio.RandomMotion):
    """``tio.RandomMotion`` whose rigid motions stay in plane on 2-D Z,Y,X subjects.

    On 2-D subjects rotations are about the slice normal (world z) only and translations are
    in plane, as TorchIO does for its own 2-D images. The k-space segments run along the last
    tensor axis (W = x) in both cases.

    Example:
        >>> from pyable_tio.transforms import RandomMotion
        >>> augmented = RandomMotion(degrees=10, translation=5)(subject_2d)  # doctest: +SKIP
    """

    _in_plane = False

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        normal = slice_normal_axis(subject)
        if normal is not None and normal != SLICE_NORMAL_AXIS:
            raise ValueError(
                f'subject "{subject.get("id")}": RandomMotion keeps 2-D motion in the world x-y plane,'
                f' but the slices are normal to world axis {normal}'
            )
        self._in_plane = normal is not None
        try:
            return super().apply_transform(subject)
        finally:
            self._in_plane = False

    def get_params(self, degrees_range, translation_range, num_transforms, perturbation=0.3, is_2d=False):
        """TorchIO's parameters, made in-plane (as for its 2-D images) while a 2-D subject is transformed."""
        return super().get_params(
            degrees_range, translation_range, num_transforms, perturbation, is_2d=is_2d or self._in_plane
        )
