"""Spatial transforms of the seed on Z,Y,X tensors: flips on D/H/W and 90-degree rotations.

Both move voxels (no interpolation, so label maps keep their values) and keep the affine, like
``tio.Flip``: the content is augmented, the grid stays the subject's Z,Y,X grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchio as tio
from torchio.transforms.augmentation import RandomTransform

#: Names of the spatial axes of a C x D x H x W tensor, by index.
AXIS_NAMES = ('D', 'H', 'W')


def parse_zyx_axes(axes: int | str | Sequence[int | str]) -> tuple[int, ...]:
    """Axis indices (0, 1, 2) from D/H/W names or indices.

    Example:
        >>> parse_zyx_axes(('H', 'W'))
        (1, 2)
    """
    items = [axes] if isinstance(axes, (int, str)) else list(axes)
    indices = []
    for item in items:
        if isinstance(item, str) and item.upper() in AXIS_NAMES:
            indices.append(AXIS_NAMES.index(item.upper()))
        elif isinstance(item, int) and not isinstance(item, bool) and item in (0, 1, 2):
            indices.append(item)
        else:
            raise ValueError(f'axes must be "D", "H", "W" or 0, 1, 2 (tensor axes of C x D x H x W), got {item!r}')
    return tuple(sorted(set(indices)))


class RandomFlip(RandomTransform, tio.SpatialTransform):
    """Flip each of the given tensor axes (D = z, H = y, W = x) with probability ``p_axis``.

    Unlike ``tio.RandomFlip``, whose integer axes are TorchIO's I, J, K, the axes here are named
    after our C x D x H x W layout. The flips applied are recorded as a ``tio.Flip`` in the
    subject's history. Axes of size 1 (D of 2-D subjects) are skipped: flipping them is a no-op
    and ``tio.Flip`` raises on them.

    Args:
        axes: Axes that may be flipped: names ``"D"``, ``"H"``, ``"W"`` or indices 0, 1, 2.
        p_axis: Probability of flipping each axis, independently.
        **kwargs: See ``tio.Transform``.

    Example:
        >>> from pyable_tio.transforms import RandomFlip
        >>> flipped = RandomFlip(axes=('H', 'W'), p_axis=0.5)(subject)  # doctest: +SKIP
    """

    def __init__(self, axes: int | str | Sequence[int | str] = ('D', 'H', 'W'), p_axis: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.axes = parse_zyx_axes(axes)
        self.p_axis = self.parse_probability(p_axis)
        self.args_names = ['axes', 'p_axis']

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        draws = torch.rand(len(self.axes))
        shape = subject.spatial_shape
        # A size-1 axis (D of a 2-D subject) has nothing to flip, and tio.Flip fails on it.
        axes = [axis for axis, draw in zip(self.axes, draws.tolist()) if draw < self.p_axis and shape[axis] > 1]
        if not axes:
            return subject
        transformed = tio.Flip(axes=axes, **self._get_base_args())(subject)
        assert isinstance(transformed, tio.Subject)
        return transformed


class Rotation90(tio.SpatialTransform):
    """Rotate every image by ``k`` x 90 degrees in the H-W (y-x) plane, from H towards W.

    Voxels are moved with ``torch.rot90`` (labels keep their values); the affine is kept, so for
    odd ``k`` a D x H x W tensor becomes D x W x H.

    Args:
        k: Number of quarter turns (any integer; taken modulo 4).
        **kwargs: See ``tio.Transform``.

    Raises:
        ValueError: odd ``k`` on an image whose H and W spacings differ (the rotated content would
            be stretched).

    Example:
        >>> from pyable_tio.transforms import Rotation90
        >>> rotated = Rotation90(1)(subject)  # doctest: +SKIP
    """

    def __init__(self, k: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.k = int(k) % 4
        self.invert_transform = False  # makes it invertible for Subject.apply_inverse_transform
        self.args_names = ['k']

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        k = (-self.k if self.invert_transform else self.k) % 4
        if k == 0:
            return subject
        images = subject.get_images_dict(intensity_only=False, include=self.include, exclude=self.exclude)
        for name, image in images.items():
            spacing = image.spacing  # D, H, W spacing for our layout
            if k % 2 and abs(spacing[1] - spacing[2]) > 1e-6 * max(spacing[1:]):
                raise ValueError(
                    f'subject "{subject.get("id")}": image "{name}": a quarter turn in the H-W plane needs equal'
                    f' H and W spacings, got {spacing[1]:g} and {spacing[2]:g} mm; resample first (tio.Resample)'
                )
            image.set_data(torch.rot90(image.data, k, dims=(2, 3)).contiguous())
        return subject


class RandomRotation90(RandomTransform, tio.SpatialTransform):
    """Rotate by a random number of quarter turns in the H-W (y-x) plane.

    Args:
        k_values: Quarter turns to choose from, uniformly (default 0, 1, 2, 3).
        **kwargs: See ``tio.Transform``.

    Example:
        >>> from pyable_tio.transforms import RandomRotation90
        >>> rotated = RandomRotation90(k_values=(0, 2))(subject)  # doctest: +SKIP
    """

    def __init__(self, k_values: Sequence[int] = (0, 1, 2, 3), **kwargs):
        super().__init__(**kwargs)
        self.k_values = tuple(int(k) for k in k_values)
        if not self.k_values:
            raise ValueError('k_values must list at least one number of quarter turns')
        self.args_names = ['k_values']

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        k = self.k_values[int(torch.randint(len(self.k_values), (1,)).item())]
        transformed = Rotation90(k, **self._get_base_args())(subject)
        assert isinstance(transformed, tio.Subject)
        return transformed
