"""Three orthogonal slices of a Z,Y,X volume, each laid out as a radiologist expects, with the
patient directions (L/R, A/P, S/I) of its edges computed from the volume's affine.

A tensor of the loader is C x D x H x W with a voxel-to-RAS affine whose columns follow D, H,
W (:meth:`pyable_tio.geometry.Grid.affine_zyx`). Each tensor axis is matched to the world
axis it runs closest to; a panel is then a transpose and flips of a tensor slice (never an
interpolation), shown with anterior up (axial) or superior up (coronal, sagittal) and the
patient's right on the viewer's left (radiological convention, as ITK-SNAP and Slicer).
The letters are read back from the affine, so an oblique grid gets its closest letters.

Example:
    >>> import numpy as np
    >>> from pyable_tio.geometry import Grid
    >>> grid = Grid((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    >>> axial = views_of(grid.affine_zyx(), (3, 2, 2))[0]
    >>> axial.name, axial.letters
    ('axial', {'top': 'A', 'bottom': 'P', 'left': 'R', 'right': 'L'})
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Letter of the positive and negative direction of each RAS world axis.
_POSITIVE, _NEGATIVE = 'RAS', 'LPI'

#: Per panel: (name, world axis normal to it, (world axis, direction) of rows going down,
#: (world axis, direction) of columns going right); RAS axes 0 = x, 1 = y, 2 = z.
PANELS = (
    ('axial', 2, (1, -1.0), (0, -1.0)),     # anterior up, patient's left on the right
    ('coronal', 1, (2, -1.0), (0, -1.0)),   # superior up, patient's left on the right
    ('sagittal', 0, (2, -1.0), (1, -1.0)),  # superior up, posterior on the right
)


def letter(vector: Sequence[float]) -> str:
    """The patient direction (one of R, L, A, P, S, I) closest to a RAS vector.

    Example:
        >>> letter((0.1, -0.9, 0.2))
        'P'
    """
    vector = np.asarray(vector, dtype=float)
    axis = int(np.argmax(np.abs(vector)))
    return _POSITIVE[axis] if vector[axis] > 0 else _NEGATIVE[axis]


def opposite(code: str) -> str:
    """The letter of the opposite direction.

    Example:
        >>> opposite('L')
        'R'
    """
    return {**dict(zip(_POSITIVE, _NEGATIVE)), **dict(zip(_NEGATIVE, _POSITIVE))}[code]


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


def world_axes(affine: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """For each RAS world axis, the tensor spatial axis running closest to it, and its direction.

    Returns:
        ``(axis_of_world, direction)``: ``axis_of_world[w]`` is a tensor axis (0 = D, 1 = H,
        2 = W) and ``direction[:, t]`` the unit RAS vector of tensor axis ``t``.

    Example:
        >>> world_axes(np.diag([1.0, 2.0, 3.0, 1.0])[:, [2, 1, 0, 3]])[0]
        (2, 1, 0)
    """
    matrix = np.asarray(affine, dtype=float)[:3, :3]
    direction = matrix / np.linalg.norm(matrix, axis=0)
    # The one-to-one matching with the largest cosines (6 candidates): an oblique grid at
    # 45 degrees still gets three distinct panels.
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(direction[w, p[w]]) for w in range(3)))
    return tuple(best), direction


def views_of(affine: np.ndarray, centre: Sequence[int]) -> list[View]:
    """The axial, coronal and sagittal views through ``centre`` (a D, H, W index).

    Args:
        affine: 4 x 4 voxel (D, H, W index) to RAS matrix of the volume.
        centre: The voxel the three panels cross.

    Example:
        >>> [v.name for v in views_of(np.eye(4), (0, 0, 0))]
        ['axial', 'coronal', 'sagittal']
    """
    axis_of_world, direction = world_axes(affine)
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    views = []
    for name, normal, (row_world, row_sign), (col_world, col_sign) in PANELS:
        row_axis, col_axis = axis_of_world[row_world], axis_of_world[col_world]
        flip_rows = np.sign(direction[row_world, row_axis]) != row_sign
        flip_cols = np.sign(direction[col_world, col_axis]) != col_sign
        down = direction[:, row_axis] * (-1 if flip_rows else 1)
        right = direction[:, col_axis] * (-1 if flip_cols else 1)
        letters = {'top': opposite(letter(down)), 'bottom': letter(down),
                   'left': opposite(letter(right)), 'right': letter(right)}
        normal_axis = axis_of_world[normal]
        views.append(View(name, normal_axis, int(centre[normal_axis]), row_axis, col_axis, bool(flip_rows),
                          bool(flip_cols), (float(spacing[row_axis]), float(spacing[col_axis])), letters))
    return views
