"""Three orthogonal slices of a Z,Y,X volume, each laid out as a radiologist expects, with the
patient directions (L/R, A/P, S/I) of its edges computed from the volume's affine.

A tensor of the loader is C x D x H x W with a voxel-to-RAS affine whose columns follow D, H,
W (:meth:`pyable_tio.geometry.Grid.affine_zyx`). Each tensor axis is matched to the world
axis it runs closest to (:func:`pyable_tio.geometry.grid.affine_orientation`); a panel is
then a transpose and flips of a tensor slice (never an interpolation), shown with anterior
up (axial) or superior up (coronal, sagittal) and the patient's right on the viewer's left
(radiological convention, as ITK-SNAP and Slicer), whatever the grid: an oblique grid is
shown in its closest orientation.

Example:
    >>> import numpy as np

from ..geometry.grid import affine_orientation
    >>> from pyable_tio.geometry import Grid
    >>> grid = Grid((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    >>> axial = views_of(grid.affine_zyx(), (3, 2, 2))[0]
    >>> axial.name, axial.letters
    ('axial', {'top': 'A', 'bottom': 'P', 'left': 'R', 'right': 'L'})
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..geometry.grid import affine_orientation

#: Letter of the positive and negative direction of each RAS world axis.
_POSITIVE, _NEGATIVE = 'RAS', 'LPI'

#: Per panel: (name, world axis normal to it, (world axis, direction) of rows going down,
#: (world axis, direction) of columns going right); RAS axes 0 = x, 1 = y, 2 = z.
PANELS = (
    ('axial', 2, (1, -1.0), (0, -1.0)),     # anterior up, patient's left on the right
    ('coronal', 1, (2, -1.0), (0, -1.0)),   # superior up, patient's left on the right
    ('sagittal', 0, (2, -1.0), (1, -1.0)),  # superior up, posterior on the right
)


def _letter(axis: int, sign: float) -> str:
    return _POSITIVE[axis] if sign > 0 else _NEGATIVE[axis]


@dataclass(frozen=True)
class View:
    """One panel: which tensor slice, how it is transposed and flipped, and its edge letters.

    Args:
        name: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        normal_axis: Tensor spatial axis (0 = D, 1 = H, 2 = W) across the panel.
        index: Slice index along ``normal_axis``.
        row_axis: Tensor spatial axis running down the panel.
        col_axis: Tensor spatial axis running right.
        flip_rows: Rows run against the tensor axis (its last voxel on top).
        flip_cols: Columns run against the tensor axis.
        spacing: Millimetres per row and per column.
        letters: Patient direction of each edge (``top``, ``bottom``, ``left``, ``right``).

    Example:
        >>> view = View('axial', 0, 1, 1, 2, False, False, (1.0, 1.0), {})
        >>> view.take(np.arange(8).reshape(2, 2, 2)).tolist()
        [[4, 5], [6, 7]]
    """

    name: str
    normal_axis: int
    index: int
    row_axis: int
    col_axis: int
    flip_rows: bool
    flip_cols: bool
    spacing: tuple[float, float]
    letters: dict[str, str]

    def take(self, volume: np.ndarray) -> np.ndarray:
        """The panel of a D x H x W array (row 0 at the top)."""
        panel = np.transpose(volume, (self.row_axis, self.col_axis, self.normal_axis))[:, :, self.index]
        if self.flip_rows:
            panel = panel[::-1]
        if self.flip_cols:
            panel = panel[:, ::-1]
        return panel


def world_axes(affine: np.ndarray) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """For each RAS world axis, the tensor spatial axis running closest to it; each tensor axis's sign.

    Returns:
        ``(axis_of_world, sign)``: ``axis_of_world[w]`` is a tensor axis (0 = D, 1 = H, 2 = W),
        ``sign[t]`` is +1 when tensor axis ``t`` runs towards R, A or S, else -1.

    Example:
        >>> world_axes(np.diag([1.0, 2.0, -3.0, 1.0])[:, [2, 1, 0, 3]])
        ((2, 1, 0), (-1.0, 1.0, 1.0))
    """
    code = affine_orientation(affine)  # one-to-one, so an oblique grid still gets three panels
    world = [_POSITIVE.index(c) if c in _POSITIVE else _NEGATIVE.index(c) for c in code]
    return tuple(world.index(w) for w in range(3)), tuple(1.0 if c in _POSITIVE else -1.0 for c in code)


def views_of(affine: np.ndarray, centre: Sequence[int]) -> list[View]:
    """The axial, coronal and sagittal views through ``centre`` (a D, H, W index).

    Args:
        affine: 4 x 4 voxel (D, H, W index) to RAS matrix of the volume.
        centre: The voxel the three panels cross.

    Example:
        >>> [v.name for v in views_of(np.eye(4), (0, 0, 0))]
        ['axial', 'coronal', 'sagittal']
    """
    axis_of_world, sign = world_axes(affine)
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    views = []
    for name, normal, (row_world, row_sign), (col_world, col_sign) in PANELS:
        row_axis, col_axis = axis_of_world[row_world], axis_of_world[col_world]
        letters = {'top': _letter(row_world, -row_sign), 'bottom': _letter(row_world, row_sign),
                   'left': _letter(col_world, -col_sign), 'right': _letter(col_world, col_sign)}
        normal_axis = axis_of_world[normal]
        views.append(View(name, normal_axis, int(centre[normal_axis]), row_axis, col_axis,
                          sign[row_axis] != row_sign, sign[col_axis] != col_sign,
                          (float(spacing[row_axis]), float(spacing[col_axis])), letters))
    return views
