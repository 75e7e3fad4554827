"""Spatial transforms of the seed on Z,Y,X tensors: flips on D/H/W and 90-degree rotations.

Both move voxels (no interpolation, so label maps keep their values). Flips keep the affine,
like ``tio.Flip``. Quarter turns keep the axes' directions and the centre of the field of view
and let each spacing follow its array axis, so the output is the input rotated rigidly in
world space, never stretched (see :class:`Rotation90`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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

    Voxels are moved with ``torch.rot90`` (labels keep their values), so for odd ``k`` a
    D x H x W tensor becomes D x W x H. The affine is rewritten to match: each array axis keeps
    the direction it had (D, H, W still point along the grid's z, y, x, so the result is in
    Z,Y,X layout) and the spacing of the input axis its voxels came from; the centre of the
    field of view stays where it was. The output is therefore the input turned rigidly by
    ``k`` x 90 degrees about the D axis through that centre, the H direction going to W: for
    every output voxel, the world point its affine gives holds the value of the input at the
    point rotated back. Unequal H and W spacings are fine (they swap with their axes).

    Args:
        k: Number of quarter turns (any integer; taken modulo 4).
        **kwargs: See ``tio.Transform``.

    Example:
        >>> from pyable_tio.transforms import Rotation90
        >>> rotated = Rotation90(1)(subject_2d)  # 1 x 16 x 20 voxels of 1.2 (H) x 1.0 (W) mm  # doctest: +SKIP
        >>> rotated['images'].shape, rotated['images'].spacing  # doctest: +SKIP
        ((1, 1, 20, 16), (1.0, 1.0, 1.2))
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
        for image in images.values():
            affine = rotated_affine(np.asarray(image.affine, float), image.spatial_shape, k)
            image.set_data(torch.rot90(image.data, k, dims=(2, 3)).contiguous())
            image.affine = affine
        return subject


def rotated_affine(affine: np.ndarray, shape: Sequence[int], k: int) -> np.ndarray:
    """The affine of ``torch.rot90(data, k, dims=(2, 3))`` for a C x D x H x W tensor of ``shape``.

    Column directions are kept; for odd ``k`` the H and W columns swap their lengths (spacings);
    the world point of the array centre is unchanged.

    Example:
        >>> rotated_affine(np.diag([3.0, 1.0, 2.0, 1.0]), (1, 4, 6), 1)[:3, :3].diagonal().tolist()
        [3.0, 2.0, 1.0]
    """
    matrix = affine[:3, :3].copy()
    if k % 2:
        lengths = np.linalg.norm(matrix, axis=0)
        units = matrix / lengths
        matrix = units * lengths[[0, 2, 1]]
    shape = np.asarray(shape, float)
    new_shape = shape[[0, 2, 1]] if k % 2 else shape
    centre = affine[:3, :3] @ ((shape - 1) / 2) + affine[:3, 3]
    result = np.eye(4)
    result[:3, :3] = matrix
    result[:3, 3] = centre - matrix @ ((new_shape - 1) / 2)
    return result


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
