"""Grids and spaces: the sampling grid, the reference choice, registration transforms, alignment.

The grid's names are importable from here too (``from pyable_tio.geometry import Grid``, as
before the package had folders); the other modules are imported by name.
"""

from .grid import (
    LPS_TO_RAS,
    META_GRID_KEYS,
    ORIENTATION_AXES,
    Grid,
    affine_orientation,
    axis_aligned_grid,
    check_orientation,
    grid_from_meta,
    planar_grid,
    ras_affine_to_grid,
    read_header,
    reorient_grid,
)

__all__ = [
    'LPS_TO_RAS',
    'META_GRID_KEYS',
    'ORIENTATION_AXES',
    'Grid',
    'affine_orientation',
    'axis_aligned_grid',
    'check_orientation',
    'grid_from_meta',
    'planar_grid',
    'ras_affine_to_grid',
    'read_header',
    'reorient_grid',
]
