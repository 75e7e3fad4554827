"""Spatial ops: steps that move voxels, each as an output-to-input map of one patch.

Every spatial op gives its map two ways, from one source of truth:
- :meth:`SpatialOp.transform`: a SimpleITK transform in LPS millimetres (output point to
  input point), built with TorchIO's own helpers; the SimpleITK engine resamples with it;
- :meth:`SpatialOp.index_map`: the same map as a 4 x 4 matrix on the volume's voxel indices
  (D, H, W), output index to input index, for linear steps. Maps compose per patch by matrix
  products, ``M = M_first @ ... @ M_last``; the numba kernel (and a batched ``grid_sample``)
  evaluates the composed map once per output voxel. The elastic op is not linear: it gives a
  B-spline displacement field instead (:meth:`ElasticOp.transform`).

Geometry, stated once:
- ``Affine``/``RandomAffine`` (``center='image'``) rotate and scale about the **patch centre**
  (TorchIO rotates about the volume centre; ``center='origin'`` keeps the world origin).
- Flips reflect about the patch centre: the flipped patch is the patch at the mirrored
  location of the flipped volume.
- ``RandomElasticDeformation`` draws its control points on the **whole volume's** grid, so the
  physical control-point spacing is the volume's; only the patch is evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio
from torchio.transforms.augmentation.spatial.random_elastic_deformation import SPLINE_ORDER

from .. import stats
from ...constants import INTERPOLATION_SUPPORT, INTERPOLATION_SUPPORT_DEFAULT
from ...geometry.grid import LPS_TO_RAS
from ...transforms.spatial import RandomFlip
from .base import SPATIAL, Drawn, PatchOp, register, sextet


def lps_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel index (D, H, W) to LPS millimetres, from a (Z,Y,X-permuted) RAS affine."""
    lps = np.array(affine, dtype=np.float64)
    lps[:3] = LPS_TO_RAS @ lps[:3]  # the flip of x and y is its own inverse
    return lps


def matrix_of(transform: sitk.Transform) -> np.ndarray:
    """A linear SimpleITK transform (or a composition of them) as a 4 x 4 matrix on points."""
    points = np.array([transform.TransformPoint(tuple(p)) for p in np.vstack([np.zeros(3), np.eye(3)])])
    matrix = np.eye(4)
    matrix[:3, :3] = (points[1:] - points[0]).T
    matrix[:3, 3] = points[0]
    return matrix


def to_index(matrix_lps: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """An LPS point map as a voxel index map of the grid of ``affine``: ``A^-1 @ T @ A``."""
    lps = lps_affine(affine)
    return np.linalg.inv(lps) @ matrix_lps @ lps


def as_crop(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(signs, offsets) when ``matrix`` only flips axes and shifts by whole voxels, else None.

    Such a map needs no interpolation: the patch is a crop of the source, reversed on the
    axes whose sign is -1 (source index = sign * output index + offset).

    Example:
        >>> as_crop(np.array([[-1., 0, 0, 9], [0, 1, 0, 2], [0, 0, 1, 0], [0, 0, 0, 1]]))
        (array([-1,  1,  1]), array([9, 2, 0]))
    """
    linear, offset = matrix[:3, :3], matrix[:3, 3]
    signs = np.rint(np.diag(linear))
    if not (np.all(np.abs(signs) == 1) and np.allclose(linear, np.diag(signs), atol=1e-9)
            and np.allclose(offset, np.rint(offset), atol=1e-9)):
        return None
    return signs.astype(int), np.rint(offset).astype(int)


class SpatialOp(PatchOp):
    """A step that moves voxels.

    Subclasses give :meth:`transform` (and :meth:`index_map` when it is linear), the
    interpolator they resample images and labels with, and the value of voxels that map
    outside the volume (:meth:`pads`).
    """

    kind = SPATIAL
    #: True when the map is affine (an :meth:`index_map`); False for displacement fields.
    linear: ClassVar[bool] = True
    #: True when the map only reorders whole voxels (no interpolation, no padding).
    reorders_only: ClassVar[bool] = False

    def transform(self, drawn: Drawn, volume: Any, start: np.ndarray, size: np.ndarray,
                  shape: np.ndarray) -> tuple[sitk.Transform | None, float]:
        """Output-to-input LPS transform for the patch at ``start`` (None: identity), and its
        largest displacement in mm (0 for linear maps)."""
        raise NotImplementedError

    def index_map(self, drawn: Drawn, volume: Any, start: np.ndarray, size: np.ndarray,
                  shape: np.ndarray) -> np.ndarray | None:
        """Output-to-input map on voxel indices (D, H, W) as a 4 x 4 matrix; None: identity.

        Example:
            >>> op.index_map(drawn, volume, np.array([0, 8, 8]), np.array([32] * 3), shape)  # doctest: +SKIP
        """
        transform, _ = self.transform(drawn, volume, start, size, shape)
        return None if transform is None else to_index(matrix_of(transform), volume.affine)

    def interpolation(self, label: bool) -> str:
        """TorchIO's interpolator name for images (``label=False``) or labels."""
        return self.step.label_interpolation if label else self.step.image_interpolation

    def support(self, label: bool) -> int:
        """Source voxels the interpolator reads beyond a point's preimage."""
        return INTERPOLATION_SUPPORT.get(self.interpolation(label), INTERPOLATION_SUPPORT_DEFAULT)

    def pads(self, drawn: Drawn, name: str, volume: Any, context: Any) -> list[float]:
        """Per-channel value of output voxels that map outside the volume."""
        raise NotImplementedError


@register
class AffineOp(SpatialOp):
    """``tio.Affine`` and ``tio.RandomAffine``: scales, rotation and translation about the patch centre."""

    transforms = (tio.Affine, tio.RandomAffine)

    def params(self, names: list[str], channels: dict[str, int], generator: torch.Generator) -> dict[str, Any]:
        step = self.step
        if isinstance(step, tio.RandomAffine):
            three = sextet(generator)
            scales = three(step.scales)
            if step.isotropic:
                scales = [scales[0]] * 3
            return {'scales': scales, 'degrees': three(step.degrees), 'translation': three(step.translation),
                    'invert': False}
        return {'scales': list(step.scales), 'degrees': list(step.degrees), 'translation': list(step.translation),
                'invert': bool(step.invert_transform)}

    def transform(self, drawn: Drawn, volume: Any, start: np.ndarray, size: np.ndarray,
                  shape: np.ndarray) -> tuple[sitk.Transform | None, float]:
        lps, params = lps_affine(volume.affine), drawn.params
        centre = None
        if self.step.center == 'image':
            centre = tuple(float(v) for v in lps[:3, :3] @ (start + (size - 1) / 2) + lps[:3, 3])
        scaling = tio.Affine._get_scaling_transform(params['scales'], center_lps=centre)
        rotation = tio.Affine._get_rotation_transform(params['degrees'], params['translation'], center_lps=centre)
        transform = sitk.CompositeTransform([scaling, rotation]).GetInverse()  # as tio.Affine
        return (transform.GetInverse() if params['invert'] else transform), 0.0

    def batchable(self) -> bool:
        # The batch samples images trilinear (or nearest) and labels nearest, as the numba kernel.
        return self.step.image_interpolation in ('linear', 'nearest') and self.step.label_interpolation == 'nearest'

    def pads(self, drawn: Drawn, name: str, volume: Any, context: Any) -> list[float]:
        if volume.label:
            return [float(self.step.default_pad_label)] * volume.channels
        pad = self.step.default_pad_value
        if pad == 'minimum':
            return context.minima(name)
        if pad in ('mean', 'otsu'):
            return context.border_means(name, pad == 'otsu')
        return [float(pad)] * volume.channels


@register
class FlipOp(SpatialOp):
    """``tio.Flip``, ``tio.RandomFlip`` and pyable-tio's ``RandomFlip``: reflections about the patch centre.

    After intensity steps, flips reverse the finished patch (no interpolation).
    """

    transforms = (tio.Flip, tio.RandomFlip, RandomFlip)
    reorders_only = True

    def params(self, names: list[str], channels: dict[str, int], generator: torch.Generator) -> dict[str, Any]:
        step = self.step
        if isinstance(step, tio.RandomFlip):
            return {'axes': step.axes, 'hot': (step.flip_probability > torch.rand(3, generator=generator)).tolist()}
        if isinstance(step, RandomFlip):  # pyable_tio's: one draw per listed D, H, W axis
            hot = [False] * 3
            for axis, value in zip(step.axes, torch.rand(len(step.axes), generator=generator).tolist()):
                hot[axis] = value < step.p_axis
            return {'axes': list(step.axes), 'hot': hot}
        return {'axes': step.axes, 'hot': [True] * 3}

    def flipped(self, drawn: Drawn, volume: Any) -> list[int]:
        """The index axes (D, H, W) the drawn flip reverses on ``volume``."""
        axes = _flip_axes(drawn.params['axes'], volume)
        return [a for a in range(3) if drawn.params['hot'][a] and a in axes]

    def index_map(self, drawn: Drawn, volume: Any, start: np.ndarray, size: np.ndarray,
                  shape: np.ndarray) -> np.ndarray | None:
        flipped = self.flipped(drawn, volume)
        if not flipped:
            return None
        matrix = np.eye(4)
        for a in flipped:  # index a -> (2 start_a + size_a - 1) - index a: about the patch centre
            matrix[a, a] = -1.0
            matrix[a, 3] = 2 * int(start[a]) + int(size[a]) - 1
        return matrix

    def transform(self, drawn: Drawn, volume: Any, start: np.ndarray, size: np.ndarray,
                  shape: np.ndarray) -> tuple[sitk.Transform | None, float]:
        index = self.index_map(drawn, volume, start, size, shape)
        if index is None:
            return None, 0.0
        lps = lps_affine(volume.affine)
        linear, origin = lps[:3, :3], lps[:3, 3]
        matrix = linear @ index[:3, :3] @ np.linalg.inv(linear)
        translation = -matrix @ origin + linear @ index[:3, 3] + origin
        return sitk.AffineTransform(matrix.ravel().tolist(), translation.tolist()), 0.0

    def interpolation(self, label: bool) -> str:
        return 'nearest'

    def batchable(self) -> bool:
        return True  # a whole-voxel reordering: part of the batch's sampling grid

    def pads(self, drawn: Drawn, name: str, volume: Any, context: Any) -> list[float]:
        return [0.0] * volume.channels  # every output voxel of the patch maps onto a voxel


@register
class ElasticOp(SpatialOp):
    """``tio.ElasticDeformation`` and ``tio.RandomElasticDeformation``: a cubic B-spline on the whole volume's grid."""

    transforms = (tio.ElasticDeformation, tio.RandomElasticDeformation)
    linear = False

    def params(self, names: list[str], channels: dict[str, int], generator: torch.Generator) -> dict[str, Any] | None:
        step = self.step
        if not any(step.max_displacement):
            return None
        if isinstance(step, tio.ElasticDeformation):
            return {'control_points': np.asarray(step.control_points), 'invert': bool(step.invert_transform)}
        field = torch.rand(*step.num_control_points, 3, generator=generator)
        field = (field - 0.5) * 2 * torch.as_tensor(step.max_displacement, dtype=torch.float32)
        for i in range(step.num_locked_borders):  # as RandomElasticDeformation.get_params
            field[i, :] = 0
            field[-1 - i, :] = 0
            field[:, i] = 0
            field[:, -1 - i] = 0
        return {'control_points': field.numpy(), 'invert': False}

    def transform(self, drawn: Drawn, volume: Any, start: np.ndarray, size: np.ndarray,
                  shape: np.ndarray) -> tuple[sitk.Transform | None, float]:
        control_points = np.array(drawn.params['control_points'], dtype=np.float64)
        if drawn.params['invert']:
            control_points = -control_points
        bspline = sitk.BSplineTransform(3, SPLINE_ORDER)
        mesh = tuple(int(n) - SPLINE_ORDER for n in control_points.shape[:-1])
        bspline.SetFixedParameters(_bspline_domain(volume.affine, tuple(int(n) for n in shape), mesh))
        bspline.SetParameters(control_points.flatten(order='F').tolist())
        # A cubic B-spline is a convex combination of its coefficients: |displacement| <= max |coefficient|.
        largest = float(np.linalg.norm(np.abs(control_points).reshape(-1, 3).max(axis=0)))
        return bspline, largest

    def index_map(self, drawn: Drawn, volume: Any, start: np.ndarray, size: np.ndarray,
                  shape: np.ndarray) -> np.ndarray | None:
        raise TypeError('an elastic deformation is a displacement field, not a matrix: use transform()')

    def pads(self, drawn: Drawn, name: str, volume: Any, context: Any) -> list[float]:
        return context.minima(name)  # ElasticDeformation pads every image with its minimum


def _bspline_domain(affine: np.ndarray, shape: tuple[int, int, int], mesh: tuple[int, ...]) -> tuple[float, ...]:
    """Fixed parameters of TorchIO's B-spline on the whole volume (``BSplineTransformInitializer``)."""
    key = ('bspline', np.asarray(affine, np.float64).tobytes(), shape, mesh)

    def compute() -> tuple[float, ...]:
        return tuple(sitk.BSplineTransformInitializer(stats.sitk_grid(affine, shape), list(mesh)).GetFixedParameters())

    return stats.remembered(key, compute)


def _flip_axes(axes: Sequence[int | str], volume: Any) -> list[int]:
    """Index axes of ``axes`` (ints or anatomical names), as ``tio.Flip`` resolves them."""
    if not any(isinstance(a, str) for a in axes):
        return [int(a) for a in axes]

    def resolve() -> list[int]:
        probe = tio.ScalarImage(tensor=torch.zeros(1, 1, 1, 1), affine=volume.affine)
        return sorted(3 + probe.axis_name_to_index(a) if isinstance(a, str) else int(a) for a in axes)

    return stats.remembered(('flip', tuple(axes), np.asarray(volume.affine).tobytes()), resolve)
