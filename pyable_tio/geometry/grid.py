"""Sampling grids and the conversions between SimpleITK's x,y,z and pyable's Z,Y,X.

Everything that knows about axis order lives here. SimpleITK (and pyable's getters) list
``size``, ``spacing``, ``origin`` in x,y,z order and ``direction`` as a row-major matrix whose
columns are the x,y,z index axes in LPS space. Arrays and tensors are Z,Y,X (C x D x H x W).
TorchIO wants a voxel-to-RAS affine whose columns follow the tensor's axes, so ours are the
columns of the usual x,y,z affine in reverse order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..io import sources
from ..constants import GRID_TOLERANCE

#: LPS (ITK) to RAS (NIfTI/TorchIO) world coordinates.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Grid:
    """A sampling grid in SimpleITK's x,y,z order (2-D or 3-D).

    Args:
        size: Number of voxels along x, y (, z).
        spacing: Voxel size in mm along x, y (, z).
        origin: LPS position in mm of the first voxel's centre.
        direction: Row-major direction cosine matrix (4 or 9 numbers).

    Example:
        >>> grid = Grid((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> grid.shape_zyx
        (6, 5, 4)
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        dim = len(self.size)
        if dim not in (2, 3):
            raise ValueError(f'grids must be 2-D or 3-D, got size {self.size}')
        if len(self.spacing) != dim or len(self.origin) != dim or len(self.direction) != dim * dim:
            raise ValueError(
                f'inconsistent grid: size {self.size}, spacing {self.spacing},'
                f' origin {self.origin}, direction {self.direction}'
            )
        if any(n < 1 for n in self.size) or any(s <= 0 for s in self.spacing):
            raise ValueError(f'size must be >= 1 and spacing > 0, got {self.size} and {self.spacing}')
        object.__setattr__(self, 'size', tuple(int(n) for n in self.size))
        for name in ('spacing', 'origin', 'direction'):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    @classmethod
    def from_image(cls, image: sitk.Image | sitk.ImageFileReader) -> Grid:
        """The grid of a SimpleITK image or of a reader after ``ReadImageInformation``."""
        return cls(
            tuple(image.GetSize()),
            tuple(image.GetSpacing()),
            tuple(image.GetOrigin()),
            tuple(image.GetDirection()),
        )

    @classmethod
    def from_dict(cls, spec: Mapping[str, Sequence[float]]) -> Grid:
        """A grid from ``{"size", "spacing", "origin"?, "direction"?}`` in x,y,z order."""
        missing = [key for key in ('size', 'spacing') if key not in spec]
        if missing:
            raise ValueError(f'reference space dict lacks {missing}; it needs size and spacing')
        unknown = set(spec) - {'size', 'spacing', 'origin', 'direction'}
        if unknown:
            raise ValueError(f'reference space dict has unknown keys {sorted(unknown)}')
        dim = len(spec['size'])
        origin = spec.get('origin', (0.0,) * dim)
        direction = spec.get('direction', tuple(np.eye(dim).ravel()))
        return cls(tuple(spec['size']), tuple(spec['spacing']), tuple(origin), tuple(direction))

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready ``size``, ``spacing``, ``origin``, ``direction`` (x,y,z order)."""
        return {
            'size': list(self.size),
            'spacing': list(self.spacing),
            'origin': list(self.origin),
            'direction': list(self.direction),
        }

    @property
    def dimension(self) -> int:
        return len(self.size)

    @property
    def num_voxels(self) -> int:
        return math.prod(self.size)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Spatial shape of the tensors on this grid: (D, H, W); D is 1 for 2-D grids."""
        size3 = self.as_3d().size
        return size3[2], size3[1], size3[0]

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction).reshape(self.dimension, self.dimension)

    def as_3d(self) -> Grid:
        """This grid, with a 2-D grid embedded as one slice of 1 mm at z = 0."""
        if self.dimension == 3:
            return self
        direction = np.eye(3)
        direction[:2, :2] = self.direction_matrix
        return Grid(
            (*self.size, 1),
            (*self.spacing, 1.0),
            (*self.origin, 0.0),
            tuple(direction.ravel()),
        )

    def affine_xyz(self) -> np.ndarray:
        """4 x 4 voxel (x,y,z index) to RAS world matrix, as TorchIO builds for its own reader."""
        grid = self.as_3d()
        matrix = LPS_TO_RAS @ grid.direction_matrix @ np.diag(grid.spacing)
        affine = np.eye(4)
        affine[:3, :3] = matrix
        affine[:3, 3] = LPS_TO_RAS @ np.asarray(grid.origin)
        return affine

    def affine_zyx(self) -> np.ndarray:
        """4 x 4 voxel (z,y,x index) to RAS world matrix: the affine of our Z,Y,X tensors."""
        return self.affine_xyz()[:, [2, 1, 0, 3]]

    def orientation(self) -> str:
        """Closest orientation code in ITK's convention, e.g. ``"LPS"`` or ``"RAI"``."""
        direction = self.as_3d().direction
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction)

    def is_axis_aligned(self, tolerance: float = GRID_TOLERANCE) -> bool:
        """True when every index axis runs along a world axis (direction cosines 0 or +-1)."""
        matrix = np.abs(self.direction_matrix)
        return bool(np.all((matrix < tolerance) | (np.abs(matrix - 1) < tolerance)))

    def matches(self, other: Grid, tolerance: float = GRID_TOLERANCE) -> bool:
        """True when both grids sample the same points (same size, within ``tolerance``)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tolerance, rtol=0)
            and np.allclose(self.origin, other.origin, atol=tolerance, rtol=0)
            and np.allclose(self.direction, other.direction, atol=tolerance, rtol=0)
        )

    def physical_point(self, index_xyz: Sequence[float]) -> np.ndarray:
        """LPS point of a continuous x,y,z index."""
        scaled = np.asarray(self.spacing) * np.asarray(index_xyz, dtype=float)
        return np.asarray(self.origin) + self.direction_matrix @ scaled

    def physical_point_zyx(self, index_zyx: Sequence[float]) -> np.ndarray:
        """LPS point of a (z, y, x) tensor index (2-D grids take (0, y, x))."""
        index_xyz = list(index_zyx)[::-1][: self.dimension]
        return self.physical_point(index_xyz)

    def empty_image(self, pixel_id: int = sitk.sitkUInt8) -> sitk.Image:
        """A blank SimpleITK image on this grid (a resampling target)."""
        image = sitk.Image(list(self.size), pixel_id)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def read_header(path: str | Path) -> sitk.ImageFileReader:
    """Read a file's header only (no voxel data). Raises ``RuntimeError`` if unreadable.

    A DICOM folder or series locator (``folder#UID``) gives the whole series' header, with
    the getters of ``sitk.ImageFileReader`` (:func:`pyable_tio.io.sources.read_header`).
    """
    return sources.read_header(path)


def ras_affine_to_grid(affine_zyx: np.ndarray, shape_zyx: Sequence[int]) -> Grid:
    """Inverse of :meth:`Grid.affine_zyx` for a 3-D tensor of spatial shape (D, H, W)."""
    affine_xyz = np.asarray(affine_zyx, dtype=float)[:, [2, 1, 0, 3]]
    matrix = LPS_TO_RAS @ affine_xyz[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = matrix / spacing
    origin = LPS_TO_RAS @ affine_xyz[:3, 3]
    size = tuple(int(n) for n in shape_zyx[::-1])
    return Grid(size, tuple(spacing), tuple(origin), tuple(direction.ravel()))


#: The grid's entries in a subject's ``meta`` (x,y,z order), as ``subjects_from_manifest`` writes them.
META_GRID_KEYS = ('size', 'spacing', 'origin', 'direction')


def grid_from_meta(meta: object) -> Grid | None:
    """The reference grid stored in a subject's ``meta``; ``None`` if ``meta`` holds no grid.

    Unlike :meth:`Grid.from_dict`, other keys (``orientation``, ``source_paths``...) are ignored.

    Args:
        meta: ``subject['meta']`` (any value: not a dict, or a dict lacking one of
            :data:`META_GRID_KEYS`, gives ``None``).

    Example:
        >>> grid_from_meta({'size': (4, 5, 6), 'spacing': (1, 1, 2), 'origin': (0, 0, 0),
        ...                 'direction': (1, 0, 0, 0, 1, 0, 0, 0, 1), 'orientation': 'LPS'}).shape_zyx
        (6, 5, 4)
    """
    if not isinstance(meta, Mapping) or not all(key in meta for key in META_GRID_KEYS):
        return None
    return Grid(*(tuple(meta[key]) for key in META_GRID_KEYS))


def planar_grid(grid: Grid) -> Grid | None:
    """The 2-D grid of a one-slice 3-D grid lying in the x-y plane; ``None`` for other grids.

    The reverse of :meth:`Grid.as_3d` (the slice's z spacing and z origin are dropped): a
    C x 1 x H x W tensor whose affine stayed in its plane is described in 2-D, like its files.

    Example:
        >>> planar_grid(Grid((4, 5), (1.0, 2.0), (3.0, 4.0), (0, 1, 1, 0)).as_3d())
        Grid(size=(4, 5), spacing=(1.0, 2.0), origin=(3.0, 4.0), direction=(0.0, 1.0, 1.0, 0.0))
    """
    if grid.dimension != 3 or grid.size[2] != 1:
        return None
    matrix = grid.direction_matrix
    if not np.allclose(matrix[2], (0, 0, 1)) or not np.allclose(matrix[:, 2], (0, 0, 1)):
        return None
    return Grid(grid.size[:2], grid.spacing[:2], grid.origin[:2], tuple(matrix[:2, :2].ravel()))


def affine_orientation(affine: np.ndarray) -> str:
    """Orientation code of a 4 x 4 voxel-to-RAS affine, one letter per column (nibabel's).

    Letters name where each index axis increases towards; for our Z,Y,X affines the first
    letter is the D axis's (``Grid.orientation()`` lists x, y, z instead).

    Example:
        >>> grid = Grid((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> affine_orientation(grid.affine_zyx()), grid.orientation()
        ('SPL', 'LPS')
    """
    return ''.join(nib.aff2axcodes(np.asarray(affine, dtype=float)))


#: Orientation letters: the LPS axis an index axis runs along and the sign of its direction.
ORIENTATION_AXES = {
    'L': (0, 1.0), 'R': (0, -1.0), 'P': (1, 1.0), 'A': (1, -1.0), 'S': (2, 1.0), 'I': (2, -1.0),
}


def check_orientation(code: str) -> str:
    """A valid 3-letter orientation code (ITK/DICOM convention), upper-cased.

    Each letter names where its index axis (x, y, z in turn) *increases towards*: ``"LPS"``
    is SimpleITK's identity direction, ``"RAS"`` is NIfTI's (and nibabel's ``RAS+``).

    Raises:
        ValueError: not three letters from L/R, P/A, S/I, one per world axis.

    Example:
        >>> check_orientation('ras')
        'RAS'
    """
    text = str(code).upper() if isinstance(code, str) else ''
    axes = [ORIENTATION_AXES[c][0] for c in text if c in ORIENTATION_AXES]
    if len(text) != 3 or sorted(axes) != [0, 1, 2]:
        problem = 'orientation must be 3 letters, one of each L/R, P/A, S/I (e.g. "LPS", "RAS")'
        raise ValueError(f'{problem}, got {code!r}')
    return text


def reorient_grid(grid: Grid, code: str) -> Grid:
    """The same voxel centres with index axes permuted and flipped to orientation ``code``.

    No voxel moves in space, so resampling a file from ``grid`` onto the result is a pure
    permutation of its array (``sitk.DICOMOrient``). An oblique grid stays oblique and gets
    ``code`` as its closest orientation.

    Args:
        grid: A 3-D grid (x,y,z order).
        code: Target orientation, e.g. ``"RAS"`` (see :func:`check_orientation`).

    Raises:
        ValueError: bad code or a 2-D grid.

    Example:
        >>> grid = Grid((4, 5, 6), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> ras = reorient_grid(grid, 'RAS')
        >>> ras.orientation(), ras.origin
        ('RAS', (3.0, 8.0, 0.0))
    """
    code = check_orientation(code)
    if grid.dimension != 3:
        raise ValueError(f'orientation applies to 3-D grids, got a {grid.dimension}-D grid')
    current = grid.orientation()
    matrix = grid.direction_matrix
    size, spacing, corner = [], [], [0] * 3
    direction = np.zeros((3, 3))
    for j, letter in enumerate(code):
        axis, sign = ORIENTATION_AXES[letter]
        i = next(k for k, c in enumerate(current) if ORIENTATION_AXES[c][0] == axis)
        flip = sign != ORIENTATION_AXES[current[i]][1]
        direction[:, j] = -matrix[:, i] if flip else matrix[:, i]
        size.append(grid.size[i])
        spacing.append(grid.spacing[i])
        corner[i] = grid.size[i] - 1 if flip else 0
    origin = grid.physical_point(corner)
    return Grid(tuple(size), tuple(spacing), tuple(origin), tuple(direction.ravel()))


def axis_aligned_grid(grid: Grid, code: str | None = None) -> Grid:
    """An axis-aligned grid covering ``grid``'s field of view, spacing kept, in ``code``.

    Spacings follow the index axes they replace (via :func:`reorient_grid`); the grid covers
    the bounding box of ``grid``'s voxel corners and is centred on it.

    Args:
        grid: A 3-D grid, usually oblique.
        code: Target orientation; defaults to ``grid``'s closest orientation.

    Example:
        >>> oblique = Grid((10, 10, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0),
        ...                (0.8, -0.6, 0, 0.6, 0.8, 0, 0, 0, 1))
        >>> aligned = axis_aligned_grid(oblique)
        >>> aligned.is_axis_aligned(), aligned.size, aligned.spacing
        (True, (14, 14, 4), (1.0, 1.0, 2.0))
    """
    permuted = reorient_grid(grid, code or grid.orientation())
    axes = np.zeros((3, 3))
    for j, letter in enumerate(permuted.orientation()):
        axis, sign = ORIENTATION_AXES[letter]
        axes[axis, j] = sign
    corners = np.array([
        grid.physical_point([(n - 0.5) if high else -0.5 for n, high in zip(grid.size, pick)])
        for pick in np.ndindex(2, 2, 2)
    ])
    coords = corners @ axes  # corner coordinates along the new axes
    low, high = coords.min(axis=0), coords.max(axis=0)
    spacing = np.asarray(permuted.spacing)
    size = np.maximum(1, np.ceil((high - low) / spacing - 1e-6)).astype(int)
    first = (low + high) / 2 - (size - 1) * spacing / 2  # centre of the first voxel
    return Grid(tuple(size), tuple(spacing), tuple(axes @ first), tuple(axes.ravel()))
