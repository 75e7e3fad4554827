"""GridReader: pass-through, one-interpolation resampling, nearest labels, pickling, load errors."""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.geometry.grid import Grid

LABELS = set(synthetic.LABEL_VALUES)


def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def reference_image(pixel_id=sitk.sitkFloat32) -> sitk.Image:
    return synthetic.phantom(size=(24, 20, 14), spacing=(1.0, 1.2, 2.0), origin=(0.0, 0.0, 0.0), pixel_id=pixel_id)


def moving_image() -> sitk.Image:
    """Different spacing and origin, oblique about two axes."""
    rotation = np.asarray(synthetic.oblique_direction(20.0, 'z')).reshape(3, 3)
    rotation = rotation @ np.asarray(synthetic.oblique_direction(12.0, 'y')).reshape(3, 3)
    return synthetic.phantom(
        size=(18, 16, 10), spacing=(1.5, 1.4, 3.0), origin=(-4.0, 3.0, -2.0),
        direction=tuple(rotation.ravel()), seed=5,
    )


def oblique_fine_grid() -> Grid:
    """Oblique, finer and anisotropic: a grid where nearest-neighbour matters."""
    return Grid((30, 26, 20), (0.7, 0.9, 1.3), (-2.0, 1.0, 0.5), synthetic.oblique_direction(33.0, 'x'))


@pytest.mark.parametrize('pixel_id', [sitk.sitkInt16, sitk.sitkFloat32])
def test_reference_channel_is_bit_identical_to_simpleitk(tmp_path, pixel_id):
    reference = reference_image(pixel_id)
    ref_path = write(reference, tmp_path / 'ref.nii.gz')
    mov_path = write(moving_image(), tmp_path / 'mov.nii.gz')
    subject = pt.subjects_from_manifest({'s': {'images': [ref_path, mov_path]}})[0]
    data = subject['images'].data.numpy()
    expected = sitk.GetArrayFromImage(sitk.ReadImage(ref_path)).astype(np.float32)
    if pixel_id == sitk.sitkInt16:
        assert sitk.ReadImage(ref_path).GetPixelID() == sitk.sitkInt16
    assert data.dtype == np.float32
    assert data.shape == (2, *expected.shape)
    assert np.array_equal(data[0], expected)


def test_other_channel_equals_simpleitk_resample_onto_reference(tmp_path):
    ref_path = write(reference_image(), tmp_path / 'ref.nii.gz')
    mov_path = write(moving_image(), tmp_path / 'mov.nii.gz')
    subject = pt.subjects_from_manifest({'s': {'images': [ref_path, mov_path]}})[0]
    reference, moving = sitk.ReadImage(ref_path), sitk.ReadImage(mov_path)
    expected = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    expected = sitk.GetArrayFromImage(expected)
    assert np.count_nonzero(expected) > expected.size // 4  # the images overlap
    np.testing.assert_allclose(subject['images'].data.numpy()[1], expected, atol=1e-5, rtol=0)


def test_same_size_on_another_grid_is_resampled(tmp_path):
    reference = reference_image()
    shifted = synthetic.phantom(
        size=reference.GetSize(), spacing=(1.1, 1.2, 1.9), origin=(1.5, -2.0, 0.7),
        direction=synthetic.oblique_direction(8.0, 'z'), seed=9,
    )
    ref_path = write(reference, tmp_path / 'ref.nii.gz')
    shifted_path = write(shifted, tmp_path / 'shifted.nii.gz')
    subject = pt.subjects_from_manifest({'s': {'images': [ref_path, shifted_path]}})[0]
    expected = sitk.Resample(sitk.ReadImage(shifted_path), sitk.ReadImage(ref_path), sitk.Transform(), sitk.sitkLinear, 0.0)
    expected = sitk.GetArrayFromImage(expected)
    assert not np.allclose(expected, sitk.GetArrayFromImage(sitk.ReadImage(shifted_path)))
    np.testing.assert_allclose(subject['images'].data.numpy()[1], expected, atol=1e-5, rtol=0)


def test_reader_returns_grid_affine_and_float_image_channel(tmp_path):
    mov_path = write(moving_image(), tmp_path / 'mov.nii.gz')
    grid = oblique_fine_grid()
    array, affine = pt.reader.GridReader(grid, 'image', 's')(mov_path)
    assert array.shape == (1, *grid.shape_zyx)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(affine, grid.affine_zyx())
    moving = sitk.ReadImage(mov_path)
    expected = sitk.Resample(moving, grid.empty_image(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    np.testing.assert_allclose(array[0], sitk.GetArrayFromImage(expected), atol=1e-5, rtol=0)


def test_label_checks_run_on_the_voxels_read_once_and_not_on_cache_hits(tmp_path, monkeypatch):
    # Many values (a probability map listed as labels): the check warns where the file is read.
    values = np.linspace(0, 255, 16 * 16 * 16).reshape(16, 16, 16).astype(np.uint8)
    path = write(sitk.GetImageFromArray(values), tmp_path / 'probability.nii.gz')
    grid = Grid.from_image(sitk.ReadImage(path))
    reads = []
    load = pt.io.backend.load
    monkeypatch.setattr(pt.io.backend, 'load', lambda *args: reads.append(args) or load(*args))
    reader = pt.reader.GridReader(grid, 'labelmap', 's', cache=pt.cache.VolumeCache(tmp_path / 'cache'))
    with pytest.warns(pt.errors.LabelValuesWarning, match='256 distinct values'):
        first, _ = reader(path)
    assert len(reads) == 1  # the checks use the image read for the volume, not a second read
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a hit reads nothing and checks nothing
        second, _ = reader(path)
    assert len(reads) == 1
    np.testing.assert_array_equal(second, first)


@pytest.mark.parametrize('pixel_id', [sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkFloat32])
def test_label_map_keeps_only_original_values_whatever_pixel_type(tmp_path, pixel_id):
    labels = sitk.Cast(synthetic.label_map(moving_image()), pixel_id)
    path = write(labels, tmp_path / 'labels.nii.gz')
    grid = oblique_fine_grid()
    array, _ = pt.reader.GridReader(grid, 'labelmap', 's')(path)
    assert set(np.unique(array).tolist()) == LABELS  # all kept, none invented
    expected = sitk.Resample(sitk.ReadImage(path), grid.empty_image(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(array[0], sitk.GetArrayFromImage(expected))
    # A linear interpolator requested for images never reaches label maps.
    linear, _ = pt.reader.GridReader(grid, 'labelmap', 's', interpolator='linear')(path)
    np.testing.assert_array_equal(linear, array)


def test_roi_stays_binary_through_subject(tmp_path):
    moving = moving_image()
    roi = sitk.Cast(synthetic.label_map(moving) > 0, sitk.sitkUInt8)
    labels = synthetic.label_map(moving)
    manifest = {
        's': {
            'images': [write(moving, tmp_path / 'mov.nii.gz')],
            'rois': [write(roi, tmp_path / 'roi.nii.gz')],
            'labelmaps': [write(labels, tmp_path / 'labels.nii.gz')],
        }
    }
    grid = oblique_fine_grid()
    subject = pt.subjects_from_manifest(manifest, reference_space=grid.to_dict())[0]
    assert set(np.unique(subject['roi_0'].data.numpy()).tolist()) == {0, 1}
    assert set(np.unique(subject['labelmap_0'].data.numpy()).tolist()) == LABELS
    assert isinstance(subject['roi_0'], tio.LabelMap)


def test_two_dimensional_file_gives_one_slice(tmp_path):
    image = synthetic.phantom(size=(32, 24), spacing=(0.5, 0.9), origin=(2.0, 3.0))
    path = write(image, tmp_path / 'flat.nii.gz')
    grid = Grid.from_image(image)
    array, affine = pt.reader.GridReader(grid, 'image', 's')(path)
    assert array.shape == (1, 1, 24, 32)
    assert np.array_equal(array[0, 0], sitk.GetArrayFromImage(sitk.ReadImage(path)))
    np.testing.assert_array_equal(affine, grid.affine_zyx())


def test_reader_and_unloaded_subject_pickle_and_deepcopy(tmp_path):
    ref_path = write(reference_image(), tmp_path / 'ref.nii.gz')
    mov_path = write(moving_image(), tmp_path / 'mov.nii.gz')
    subject = pt.subjects_from_manifest({'s': {'images': [ref_path, mov_path]}})[0]
    reader = subject['images'].reader
    assert isinstance(reader, pt.reader.GridReader)
    for clone in (pickle.loads(pickle.dumps(reader)), copy.deepcopy(reader)):
        assert clone.grid == reader.grid and clone.role == reader.role
        np.testing.assert_array_equal(clone(mov_path)[0], reader(mov_path)[0])
    assert not subject['images']._loaded
    restored = pickle.loads(pickle.dumps(subject))
    assert not restored['images']._loaded
    np.testing.assert_array_equal(restored['images'].data.numpy(), subject['images'].data.numpy())
    copied = copy.deepcopy(subject)
    np.testing.assert_array_equal(copied['images'].data.numpy(), subject['images'].data.numpy())


def test_reader_with_in_memory_transform_pickles(tmp_path):
    path = write(reference_image(), tmp_path / 'ref.nii.gz')
    grid = Grid.from_image(sitk.ReadImage(path))
    shift = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))
    entries = (pt.manifest.TransformEntry(shift),)
    reader = pt.reader.GridReader(grid, 'image', 's', transforms={path: entries})
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone(path)[0], reader(path)[0])
    expected = sitk.Resample(sitk.ReadImage(path), grid.empty_image(), shift, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    np.testing.assert_allclose(reader(path)[0][0], sitk.GetArrayFromImage(expected), atol=1e-5)


def test_one_state_the_per_path_shorthands_become_entries(tmp_path):
    """transforms=/preprocessing= are a shorthand for entries: afterwards the reader has one state."""
    path = write(reference_image(), tmp_path / 'ref.nii.gz')
    grid = Grid.from_image(sitk.ReadImage(path))
    chain = (pt.manifest.TransformEntry(sitk.TranslationTransform(3, (2.0, 0.0, 0.0))),)
    reader = pt.reader.GridReader(grid, 'image', 's', transforms={Path(path): chain}, default_value=-1.0)
    (entry,) = reader.entries
    assert entry.source == Path(path) and entry.transforms == chain and entry.default_value == -1.0
    assert reader.transforms == {path: chain} and reader.entry(path) is entry
    same = pt.reader.GridReader.for_entries(grid, 's', reader.entries)
    np.testing.assert_array_equal(same(path)[0], reader(path)[0])
    with pytest.raises(ValueError, match='not both'):
        pt.reader.GridReader(grid, 'image', 's', transforms={path: chain}, entries=reader.entries)


def test_file_deleted_after_build_gives_load_error(tmp_path):
    ref_path = write(reference_image(), tmp_path / 'ref.nii.gz')
    mov_path = write(moving_image(), tmp_path / 'mov.nii.gz')
    subject = pt.subjects_from_manifest({'subj-7': {'images': [ref_path, mov_path]}})[0]
    (tmp_path / 'mov.nii.gz').unlink()
    with pytest.raises(pt.LoadError) as info:
        subject.load()
    message = str(info.value)
    assert 'subj-7' in message and 'mov.nii.gz' in message


def test_mismatched_dimension_at_load_is_load_error(tmp_path):
    path = write(synthetic.phantom(size=(8, 6)), tmp_path / 'flat.nii.gz')
    grid = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    with pytest.raises(pt.LoadError, match='mismatched dimensions'):
        pt.reader.GridReader(grid, 'image', 's')(path)


def test_bad_role_and_interpolator_are_rejected():
    grid = oblique_fine_grid()
    with pytest.raises(ValueError, match='role'):
        pt.reader.GridReader(grid, 'mask', 's')
    with pytest.raises(ValueError, match='interpolator'):
        pt.reader.GridReader(grid, 'image', 's', interpolator='cubic')


def test_default_value_fills_images_but_labels_stay_background(tmp_path):
    reference = reference_image()
    small = synthetic.phantom(size=(10, 9, 6), origin=(5.0, 5.0, 5.0), seed=3)
    manifest = {'s': {
        'images': [write(reference, tmp_path / 'ref.nii.gz'), write(small, tmp_path / 'small.nii.gz')],
        'labelmaps': [write(synthetic.label_map(small), tmp_path / 'labels.nii.gz')],
        'rois': [write(sitk.Cast(synthetic.label_map(small) > 0, sitk.sitkUInt8), tmp_path / 'roi.nii.gz')],
    }}
    subject = pt.subjects_from_manifest(manifest, default_value=-1000.0)[0]
    ref, moving = sitk.ReadImage(manifest['s']['images'][0]), sitk.ReadImage(manifest['s']['images'][1])
    expected = sitk.GetArrayFromImage(sitk.Resample(moving, ref, sitk.Transform(), sitk.sitkLinear, -1000.0))
    assert (expected == -1000).any()
    np.testing.assert_allclose(subject['images'].data.numpy()[1], expected, atol=1e-5, rtol=0)
    assert set(np.unique(subject['labelmap_0'].data.numpy()).tolist()) == LABELS
    assert set(np.unique(subject['roi_0'].data.numpy()).tolist()) == {0, 1}


def test_vector_image_gives_one_channel_per_component(tmp_path):
    reference = reference_image()
    moving = moving_image()
    vector = sitk.Compose([moving, moving * 2.0, moving * -1.0])
    manifest = {'s': {'images': [write(reference, tmp_path / 'ref.nii.gz'), write(vector, tmp_path / 'vec.nii.gz')]}}
    subject = pt.subjects_from_manifest(manifest)[0]
    data = subject['images'].data.numpy()
    assert data.shape == (4, *reference_image().GetSize()[::-1])
    expected = sitk.Resample(moving, sitk.ReadImage(manifest['s']['images'][0]), sitk.Transform(), sitk.sitkLinear, 0.0)
    expected = sitk.GetArrayFromImage(expected)
    for channel, factor in zip((1, 2, 3), (1.0, 2.0, -1.0)):
        np.testing.assert_allclose(data[channel], factor * expected, atol=1e-4, rtol=1e-6)
