"""orientation= and axis_aligned=: reoriented grids keep every voxel where it was."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.geometry.grid import Grid, axis_aligned_grid, check_orientation, reorient_grid

CODES = ['LPS', 'RAS', 'RAI', 'ASL', 'IPR', 'SLA']


def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def lps_image() -> sitk.Image:
    return synthetic.phantom(size=(20, 16, 12), spacing=(1.0, 1.25, 2.0), origin=(-3.0, 4.0, 1.0), seed=2)


def oblique_image() -> sitk.Image:
    return synthetic.phantom(size=(22, 18, 12), spacing=(1.0, 1.2, 2.0), origin=(-4.0, 2.0, 1.0),
                             direction=synthetic.oblique_direction(25.0, 'z'), seed=4)


def meta_grid(subject) -> Grid:
    meta = subject['meta']
    return Grid(meta['size'], meta['spacing'], meta['origin'], meta['direction'])


@pytest.mark.parametrize('code', CODES)
@pytest.mark.parametrize('make', [lps_image, oblique_image])
def test_reorient_grid_equals_dicom_orient(code, make):
    image = make()
    grid = reorient_grid(Grid.from_image(image), code)
    assert grid.matches(Grid.from_image(sitk.DICOMOrient(image, code)))
    assert grid.orientation() == code
    # The same voxel centres: the new first and last voxels are corners of the old grid.
    old = Grid.from_image(image)
    corners = [old.physical_point(np.multiply(pick, np.subtract(old.size, 1))) for pick in np.ndindex(2, 2, 2)]
    for index in ((0, 0, 0), np.subtract(grid.size, 1)):
        assert min(np.linalg.norm(grid.physical_point(index) - c) for c in corners) < 1e-9


def test_orientation_permutes_the_reference_without_interpolation(tmp_path):
    image = lps_image()
    labels = synthetic.label_map(image)
    moving = oblique_image()
    manifest = {'s': {
        'images': [write(image, tmp_path / 'ref.nii.gz'), write(moving, tmp_path / 'other.nii.gz')],
        'labelmaps': [write(labels, tmp_path / 'labels.nii.gz')],
    }}
    subject = pt.subjects_from_manifest(manifest, orientation='RAS')[0]
    expected = sitk.DICOMOrient(image, 'RAS')
    assert subject['meta']['orientation'] == 'RAS'
    assert meta_grid(subject).matches(Grid.from_image(expected))
    data = subject['images'].data.numpy()
    np.testing.assert_array_equal(data[0], sitk.GetArrayFromImage(expected))
    np.testing.assert_array_equal(subject['labelmap_0'].data.numpy()[0],
                                  sitk.GetArrayFromImage(sitk.DICOMOrient(labels, 'RAS')))
    # Other files are resampled onto the reoriented grid, as SimpleITK does.
    other = sitk.Resample(moving, expected, sitk.Transform(), sitk.sitkLinear, 0.0)
    np.testing.assert_allclose(data[1], sitk.GetArrayFromImage(other), atol=1e-4)
    # TorchIO reads the affine of our Z,Y,X tensors: its code is ours reversed.
    assert ''.join(subject['images'].orientation) == 'SAR'
    np.testing.assert_allclose(subject['images'].affine, Grid.from_image(expected).affine_zyx())


def test_oblique_reference_keeps_oblique_directions_unless_axis_aligned(tmp_path):
    path = write(oblique_image(), tmp_path / 'oblique.nii.gz')
    image = sitk.ReadImage(path)  # NIfTI stores float32 spacings
    permuted = pt.subjects_from_manifest({'s': {'images': [path]}}, orientation='RAS')[0]
    assert not meta_grid(permuted).is_axis_aligned()
    np.testing.assert_array_equal(permuted['images'].data.numpy()[0],
                                  sitk.GetArrayFromImage(sitk.DICOMOrient(image, 'RAS')))
    aligned = pt.subjects_from_manifest({'s': {'images': [path]}}, orientation='RAS', axis_aligned=True)[0]
    grid = meta_grid(aligned)
    assert grid.is_axis_aligned() and aligned['meta']['orientation'] == 'RAS'
    assert grid.spacing == reorient_grid(Grid.from_image(image), 'RAS').spacing


def test_axis_aligned_grid_covers_the_field_of_view_and_keeps_content(tmp_path):
    path = write(oblique_image(), tmp_path / 'oblique.nii.gz')
    image = sitk.ReadImage(path)  # NIfTI stores float32 spacings
    subject = pt.subjects_from_manifest({'s': {'images': [path]}}, axis_aligned=True)[0]
    grid = meta_grid(subject)
    old = Grid.from_image(image)
    assert grid.is_axis_aligned() and grid.spacing == old.spacing  # 25 degrees about z: x, y, z keep their axes
    assert subject['meta']['orientation'] == old.orientation()
    # Every voxel centre of the oblique grid falls inside the new grid.
    inverse = np.linalg.inv(grid.direction_matrix * np.asarray(grid.spacing))
    for pick in np.ndindex(2, 2, 2):
        point = old.physical_point(np.multiply(pick, np.subtract(old.size, 1)))
        index = inverse @ (point - np.asarray(grid.origin))
        assert np.all(index > -0.5) and np.all(index < np.asarray(grid.size) - 0.5)
    # Resampled back onto the oblique grid, the content is the original (two linear interpolations).
    aligned = sitk.GetImageFromArray(subject['images'].data.numpy()[0])
    aligned.SetOrigin(grid.origin)
    aligned.SetSpacing(grid.spacing)
    aligned.SetDirection(grid.direction)
    back = sitk.GetArrayFromImage(sitk.Resample(aligned, image, sitk.Transform(), sitk.sitkLinear, 0.0))
    original = sitk.GetArrayFromImage(image)
    core = (slice(2, -2), slice(3, -3), slice(3, -3))
    error = np.abs(back[core] - original[core])
    assert np.median(error) < 1.0 and error.mean() < 0.05 * np.abs(original[core]).mean()


def test_axis_aligned_grid_of_an_aligned_grid_is_itself():
    grid = Grid.from_image(lps_image())
    assert axis_aligned_grid(grid).matches(grid)
    assert axis_aligned_grid(grid, 'RAS').matches(reorient_grid(grid, 'RAS'))


def test_bad_orientation_codes_and_2d_references(tmp_path):
    assert check_orientation('ras') == 'RAS'
    for bad in ('LPP', 'XYZ', 'LP', 3):
        with pytest.raises(ValueError, match='orientation'):
            check_orientation(bad)
    path = write(lps_image(), tmp_path / 'a.nii.gz')
    with pytest.raises(ValueError, match='orientation'):
        pt.subjects_from_manifest({'s': {'images': [path]}}, orientation='LRS')
    flat = write(synthetic.phantom(size=(8, 6)), tmp_path / 'flat.nii.gz')
    with pytest.raises(pt.ManifestError) as info:
        pt.subjects_from_manifest({'flat-1': {'images': [flat]}}, orientation='RAS')
    assert 'flat-1' in str(info.value) and '3-D' in str(info.value)
