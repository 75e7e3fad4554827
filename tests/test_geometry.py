"""Grids and affines: Z,Y,X voxel indices must land on SimpleITK's physical points."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.geometry.grid import Grid, affine_orientation, grid_from_meta, planar_grid, ras_affine_to_grid, read_header

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def oblique_reference() -> sitk.Image:
    """Oblique about two axes, anisotropic, non-zero origin, non-cubic size."""
    rotation = np.asarray(synthetic.oblique_direction(25.0, 'z')).reshape(3, 3)
    rotation = rotation @ np.asarray(synthetic.oblique_direction(-10.0, 'x')).reshape(3, 3)
    return synthetic.phantom(
        size=(20, 16, 12),
        spacing=(0.7, 1.1, 2.5),
        origin=(-12.5, 30.0, 4.0),
        direction=tuple(rotation.ravel()),
    )


def random_indices_xyz(size, count=25, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, n)) for n in size) for _ in range(count)]


def test_affine_zyx_maps_voxels_to_simpleitk_points():
    image = oblique_reference()
    grid = Grid.from_image(image)
    affine = grid.affine_zyx()
    for x, y, z in random_indices_xyz(image.GetSize()):
        expected = LPS_TO_RAS * np.asarray(image.TransformIndexToPhysicalPoint((x, y, z)))
        mapped = affine @ np.array([z, y, x, 1.0])
        np.testing.assert_allclose(mapped[:3], expected, atol=1e-9)
        np.testing.assert_allclose(grid.physical_point_zyx((z, y, x)), LPS_TO_RAS * expected, atol=1e-9)


def test_affine_zyx_is_torchio_affine_with_columns_reversed(tmp_path):
    image = oblique_reference()
    path = tmp_path / 'oblique.nii.gz'
    sitk.WriteImage(image, str(path))
    torchio_affine = tio.ScalarImage(path).affine  # TorchIO's default reader (x,y,z columns)
    grid = Grid.from_image(read_header(path))
    np.testing.assert_allclose(grid.affine_zyx(), torchio_affine[:, [2, 1, 0, 3]], atol=1e-4)
    np.testing.assert_allclose(grid.affine_xyz(), torchio_affine, atol=1e-4)


def test_ras_affine_to_grid_inverts_affine_zyx():
    grid = Grid.from_image(oblique_reference())
    back = ras_affine_to_grid(grid.affine_zyx(), grid.shape_zyx)
    assert back.matches(grid, tolerance=1e-9)


def test_shape_zyx_and_empty_image_follow_size_in_reverse():
    grid = Grid((5, 6, 7), (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), synthetic.oblique_direction(30.0, 'y'))
    assert grid.shape_zyx == (7, 6, 5)
    blank = grid.empty_image()
    assert sitk.GetArrayFromImage(blank).shape == grid.shape_zyx
    assert Grid.from_image(blank).matches(grid)


def test_two_dimensional_grid_embeds_as_one_slice():
    image = synthetic.phantom(size=(32, 24), spacing=(0.8, 1.3), origin=(5.0, -7.0))
    image.SetDirection(np.asarray(synthetic.oblique_direction(30.0, 'z')).reshape(3, 3)[:2, :2].ravel())
    grid = Grid.from_image(image)
    assert grid.shape_zyx == (1, 24, 32)
    affine = grid.affine_zyx()
    for x, y in random_indices_xyz(image.GetSize()):
        point = image.TransformIndexToPhysicalPoint((x, y))
        expected = LPS_TO_RAS * np.array([point[0], point[1], 0.0])
        np.testing.assert_allclose((affine @ np.array([0, y, x, 1.0]))[:3], expected, atol=1e-9)


def test_orientation_codes():
    identity = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    assert identity.orientation() == 'LPS'
    flipped = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.diag([-1.0, -1.0, 1.0]).ravel()))
    assert flipped.orientation() == 'RAS'


def test_matches_uses_tolerance_and_size():
    grid = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    assert grid.matches(Grid((4, 4, 4), (1.0, 1.0, 1.0), (1e-7, 0.0, 0.0), grid.direction))
    assert not grid.matches(Grid((4, 4, 4), (1.0, 1.0, 1.0), (1e-3, 0.0, 0.0), grid.direction))
    assert not grid.matches(Grid((4, 4, 5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), grid.direction))


def test_from_dict_defaults_and_errors():
    grid = Grid.from_dict({'size': [3, 4, 5], 'spacing': [1, 2, 3]})
    assert grid.origin == (0.0, 0.0, 0.0)
    assert grid.direction == tuple(np.eye(3).ravel())
    assert Grid.from_dict(grid.to_dict()) == grid
    with pytest.raises(ValueError, match='spacing'):
        Grid.from_dict({'size': [3, 4, 5]})
    with pytest.raises(ValueError, match='unknown'):
        Grid.from_dict({'size': [3, 4, 5], 'spacing': [1, 1, 1], 'shape': [1]})
    with pytest.raises(ValueError, match='inconsistent'):
        Grid((3, 4, 5), (1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))


def test_planar_grid_reverses_as_3d_and_keeps_points():
    in_plane = np.asarray(synthetic.oblique_direction(30.0, 'z')).reshape(3, 3)[:2, :2]
    grid2d = Grid((7, 5), (0.6, 1.3), (4.0, -2.0), tuple(in_plane.ravel()))
    planar = planar_grid(grid2d.as_3d())
    assert planar is not None and planar.matches(grid2d)
    for x, y in [(0, 0), (6, 4), (3, 2)]:
        np.testing.assert_allclose(planar.physical_point((x, y)), grid2d.as_3d().physical_point((x, y, 0))[:2])
    tilted = Grid((7, 5, 1), (0.6, 1.3, 1.0), (0.0, 0.0, 0.0), synthetic.oblique_direction(20.0, 'x'))
    assert planar_grid(tilted) is None  # slice not in the x-y plane
    assert planar_grid(Grid((7, 5, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))) is None
    assert planar_grid(grid2d) is None


def test_grid_from_meta_reads_the_subject_grid(tmp_path):
    image = oblique_reference()
    path = tmp_path / 'ref.nii.gz'
    sitk.WriteImage(image, str(path))
    subject = pt.subjects_from_manifest({'s': {'images': [str(path)]}})[0]
    grid = grid_from_meta(subject['meta'])
    assert grid is not None and grid.matches(Grid.from_image(read_header(path)))
    assert grid_from_meta({k: v for k, v in subject['meta'].items() if k != 'origin'}) is None
    assert grid_from_meta(None) is None


def test_affine_orientation_is_torchio_orientation(tmp_path):
    path = tmp_path / 'ref.nii.gz'
    sitk.WriteImage(oblique_reference(), str(path))
    grid = Grid.from_image(read_header(path))
    expected = ''.join(tio.ScalarImage(path).orientation)  # TorchIO's own x,y,z affine
    assert affine_orientation(grid.affine_xyz()) == expected
    assert affine_orientation(grid.affine_zyx()) == expected[::-1]
