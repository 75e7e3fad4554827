"""PyableDataset: the seed's dict API over subjects_from_manifest, transforms, meta, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.io import backend
from pyable_tio.geometry.grid import Grid
from pyable_tio.datasets.pyable import seed_transforms

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    """Two subjects: T1 (20 x 18 x 12, x,y,z) + oblique thick-slice T2, labels, ROI, extras."""
    folder = tmp_path_factory.mktemp('pyable_dataset')
    return synthetic.write_dataset(folder, num_subjects=2, size=(20, 18, 12), spacing=(1.0, 1.1, 1.8))


def physical_lps(affine_zyx, index_zyx) -> np.ndarray:
    """LPS point of a Z,Y,X voxel index through a RAS affine."""
    return (np.asarray(affine_zyx) @ np.array([*index_zyx, 1.0]))[:3] * LPS_TO_RAS


def test_item_matches_the_subject_and_the_seed_layout(manifest):
    dataset = pt.PyableDataset(manifest)
    subject = pt.subjects_from_manifest(manifest)[1]
    subject.load()
    item = dataset[1]
    assert len(dataset) == 2 and dataset.ids == ['sub-00', 'sub-01']
    assert item['id'] == 'sub-01' and item['label'] == 1 and item['age'] == 41
    assert item['images'].shape == (2, 12, 18, 20) and item['images'].dtype == torch.float32
    assert torch.equal(item['images'], subject['images'].data)
    assert [r.shape for r in item['rois']] == [(12, 18, 20)]
    assert torch.equal(item['labelmaps'][0], subject['labelmap_0'].data[0])
    assert set(item['labelmaps'][0].unique().tolist()) <= set(synthetic.LABEL_VALUES)
    meta = item['meta']
    assert meta['axis_order'] == 'xyz'
    assert meta['size'] == (20, 18, 12) and meta['spacing'] == pytest.approx((1.0, 1.1, 1.8))
    assert tuple(reversed(meta['size'])) == tuple(item['images'].shape[1:])
    assert set(meta) >= {'spacing', 'origin', 'direction', 'orientation', 'source_paths',
                         'reference_used', 'transforms_applied', 'affine'}
    assert meta['reference_used'].endswith('sub-01_t1.nii.gz')


def test_meta_geometry_and_affine_are_physically_right(manifest):
    item = pt.PyableDataset(manifest)[0]
    t1 = sitk.ReadImage(item['meta']['source_paths']['images'][0])
    t2 = sitk.ReadImage(item['meta']['source_paths']['images'][1])
    meta = item['meta']
    assert meta['origin'] == pytest.approx(t1.GetOrigin())
    assert meta['direction'] == pytest.approx(t1.GetDirection())
    for index_zyx in [(0, 0, 0), (11, 17, 19), (5, 3, 9)]:
        expected = t1.TransformIndexToPhysicalPoint([int(i) for i in index_zyx[::-1]])
        np.testing.assert_allclose(physical_lps(meta['affine'], index_zyx), expected, atol=1e-6)
    # The oblique T2 channel holds SimpleITK's linear resampling of T2 onto the T1 grid.
    expected = sitk.GetArrayFromImage(sitk.Resample(t2, t1, sitk.Transform(), sitk.sitkLinear, 0.0))
    np.testing.assert_allclose(item['images'][1].numpy(), expected, atol=1e-3)


def test_every_manifest_format_gives_the_same_items(manifest, tmp_path):
    import json

    raw = json.loads(manifest.read_text())
    folder = manifest.parent
    rows = ['id,image_paths,roi_paths,labelmap_paths,label']
    for name, entry in raw.items():
        images = json.dumps([str(folder / p) for p in entry['images']]).replace('"', '""')
        rows.append(f'{name},"{images}",{folder / entry["rois"][0]},{folder / entry["labelmaps"][0]},{entry["label"]}')
    csv = tmp_path / 'manifest.csv'
    csv.write_text('\n'.join(rows) + '\n')
    from_json, from_csv = pt.PyableDataset(manifest), pt.PyableDataset(csv)
    assert from_csv.ids == from_json.ids
    for a, b in zip((from_json[0], from_json[1]), (from_csv[0], from_csv[1])):
        assert torch.equal(a['images'], b['images']) and torch.equal(a['rois'][0], b['rois'][0])
        assert a['label'] == b['label'] and a['meta']['source_paths'] == b['meta']['source_paths']
    from_paths = pt.PyableDataset([str(folder / 'sub-01_t1.nii.gz')])[0]
    assert from_paths['id'] == 'sub-01_t1' and from_paths['rois'] == []
    assert torch.equal(from_paths['images'][0], from_json[1]['images'][0])


def test_lazy_construction_reads_headers_only(manifest, monkeypatch):
    calls = []
    original = backend.load
    monkeypatch.setattr(backend, 'load', lambda path, role: calls.append(path) or original(path, role))
    dataset = pt.PyableDataset(manifest)
    assert calls == []
    dataset[0]
    assert len(calls) == 4  # t1, t2, roi, labels of one subject
    # Loaded voxels are not kept by the dataset: a second access reads the files again.
    dataset[0]
    assert len(calls) == 8
    assert not any(image._loaded for image in dataset.subjects[0].get_images(intensity_only=False))


def test_unstacked_channels_and_no_meta(manifest):
    stacked = pt.PyableDataset(manifest)[0]
    item = pt.PyableDataset(manifest, stack_channels=False, return_meta=False, dtype=torch.float64)[0]
    assert 'meta' not in item
    assert isinstance(item['images'], list) and len(item['images']) == 2
    for channel, expected in zip(item['images'], stacked['images']):
        assert channel.shape == (12, 18, 20) and channel.dtype == torch.float64
        torch.testing.assert_close(channel, expected.double())


def test_seed_signature_transform_gets_and_returns_the_tensors(manifest):
    seen = {}

    def seed(images, rois, labelmaps, meta):
        seen['meta'] = meta
        return images * 2, [1 - r for r in rois], labelmaps

    plain = pt.PyableDataset(manifest)[0]
    item = pt.PyableDataset(manifest, transforms=seed, return_meta=False)[0]
    assert seen['meta']['axis_order'] == 'xyz' and 'meta' not in item
    torch.testing.assert_close(item['images'], plain['images'] * 2)
    assert torch.equal(item['rois'][0], 1 - plain['rois'][0])
    assert torch.equal(item['labelmaps'][0], plain['labelmaps'][0])


def test_torchio_transform_updates_shapes_and_meta_geometry(manifest):
    plain = pt.PyableDataset(manifest)[0]
    # Our tensors are Z,Y,X: TorchIO's first spatial axis is D here; crop 2 slices at the start.
    crop = tio.Crop((2, 0, 0, 0, 0, 0))
    item = pt.PyableDataset(manifest, transforms=[crop, lambda i, r, lm, m: (i, r, lm)])[0]
    assert item['images'].shape == (2, 10, 18, 20)
    assert torch.equal(item['images'], plain['images'][:, 2:])
    assert torch.equal(item['labelmaps'][0], plain['labelmaps'][0][2:])
    meta = item['meta']
    assert meta['size'] == (20, 18, 10)
    # The new origin is where voxel (z=2, y=0, x=0) of the uncropped volume was.
    np.testing.assert_allclose(meta['origin'], physical_lps(plain['meta']['affine'], (2, 0, 0)), atol=1e-6)
    assert meta['spacing'] == pytest.approx(plain['meta']['spacing'])
    assert meta['direction'] == pytest.approx(plain['meta']['direction'], abs=1e-9)


def test_package_transforms_run_on_the_subject(manifest):
    transforms = pytest.importorskip('pyable_tio.transforms')
    plain = pt.PyableDataset(manifest)[0]
    flip = transforms.RandomFlip(axes=('W',), p_axis=1.0)  # W = x, the last tensor axis
    item = pt.PyableDataset(manifest, transforms=[flip, transforms.IntensityNormalization(mask='roi_0')])[0]
    assert torch.equal(item['labelmaps'][0], plain['labelmaps'][0].flip(-1))
    body = item['rois'][0] > 0
    for channel in item['images']:
        assert abs(float(channel[body].mean())) < 1e-4 and abs(float(channel[body].std()) - 1) < 1e-2


def test_dataset_pickles_for_spawned_workers(manifest):
    import pickle

    dataset = pt.PyableDataset(manifest, transforms=tio.Crop((1, 0, 0, 0, 0, 0)))
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[1]['images'], dataset[1]['images'])


def test_items_stay_zyx_after_a_transform_that_reorders_axes(manifest):
    plain = pt.PyableDataset(manifest)[0]
    item = pt.PyableDataset(manifest, transforms=tio.ToCanonical())[0]  # RAS voxel order, then the guard
    assert item['images'].shape == plain['images'].shape
    assert torch.equal(item['images'], plain['images'])
    assert torch.equal(item['labelmaps'][0], plain['labelmaps'][0])
    np.testing.assert_allclose(item['meta']['affine'], plain['meta']['affine'], atol=1e-6)


def test_transform_ordering_and_validation():
    """No signature sniffing: every callable that is not a tio.Transform is a seed-style function."""
    flip = tio.RandomFlip()
    seed = lambda images, rois, labelmaps, meta: (images, rois, labelmaps)  # noqa: E731
    steps = seed_transforms([seed, flip, seed])  # any order
    assert [type(s).__name__ for s in steps] == ['CallableTransform', 'RandomFlip', 'CallableTransform']
    assert steps[0].function is seed and steps[1] is flip
    with pytest.raises(ValueError, match='callables'):
        seed_transforms([3])


def test_dict_transform_with_a_wrong_return_names_the_subject(manifest):
    dataset = pt.PyableDataset(manifest, transforms=lambda images, rois, labelmaps, meta: images)
    with pytest.raises(TypeError, match='subject "sub-00".*must return'):
        dataset[0]


def test_reference_selector_and_reference_space(tmp_path):
    small = write(synthetic.phantom((10, 10, 8), (2.0, 2.0, 2.0), seed=1), tmp_path / 'small.nii.gz')
    large = write(synthetic.phantom((16, 14, 12), (1.2, 1.3, 1.4), seed=2), tmp_path / 'large.nii.gz')
    manifest = {'s': {'images': [small, large]}}
    item = pt.PyableDataset(manifest, reference_selector='largest')[0]
    assert item['images'].shape == (2, 12, 14, 16) and item['meta']['reference_used'] == large
    space = {'size': [6, 5, 4], 'spacing': [3.0, 3.0, 3.0], 'origin': [1.0, 1.0, 1.0]}
    item = pt.PyableDataset(manifest, reference_space=space)[0]
    assert item['images'].shape == (2, 4, 5, 6) and item['meta']['origin'] == pytest.approx((1, 1, 1))


def test_cache_dir_gives_the_same_items(manifest, tmp_path):
    pytest.importorskip('pyable_tio.cache')
    plain = pt.PyableDataset(manifest)[0]
    cached = pt.PyableDataset(manifest, cache_dir=tmp_path / 'cache')
    for _ in range(2):  # miss, then hit
        item = cached[0]
        assert torch.equal(item['images'], plain['images'])
        assert torch.equal(item['labelmaps'][0], plain['labelmaps'][0])


# Edge cases (issue item 3).


def test_empty_roi_lists_and_different_counts(tmp_path):
    image = synthetic.phantom((12, 10, 8), seed=1)
    t1 = write(image, tmp_path / 't1.nii.gz')
    labels = write(synthetic.label_map(image), tmp_path / 'labels.nii.gz')
    roi = write(sitk.Cast(synthetic.label_map(image) > 0, sitk.sitkUInt8), tmp_path / 'roi.nii.gz')
    manifest = {
        'none': {'images': [t1]},
        'two': {'images': [t1], 'rois': [roi, labels], 'labelmaps': [labels]},
    }
    dataset = pt.PyableDataset(manifest)
    empty, full = dataset[0], dataset[1]
    assert empty['rois'] == [] and empty['labelmaps'] == []
    assert len(full['rois']) == 2 and len(full['labelmaps']) == 1
    assert empty['images'].shape == (1, 8, 10, 12)  # single channel keeps C = 1
    assert torch.equal(full['rois'][0], torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(roi))))


def test_two_dimensional_files(tmp_path):
    image2d = sitk.GetImageFromArray(np.arange(30 * 20, dtype=np.float32).reshape(30, 20))
    image2d.SetSpacing((0.5, 0.7))
    image2d.SetOrigin((3.0, -2.0))
    labels = sitk.Cast(image2d > 300, sitk.sitkUInt8)
    manifest = {'flat': {'images': [write(image2d, tmp_path / 'a.nii.gz')],
                         'labelmaps': [write(labels, tmp_path / 'l.nii.gz')]}}
    item = pt.PyableDataset(manifest)[0]
    assert item['images'].shape == (1, 1, 30, 20)  # C x D x H x W with D = 1
    assert item['labelmaps'][0].shape == (1, 30, 20)
    np.testing.assert_array_equal(item['images'][0, 0].numpy(), sitk.GetArrayFromImage(image2d))
    meta = item['meta']
    assert meta['size'] == (20, 30) and meta['spacing'] == pytest.approx((0.5, 0.7))
    assert meta['origin'] == pytest.approx((3.0, -2.0)) and len(meta['direction']) == 4
    expected = image2d.TransformIndexToPhysicalPoint((7, 11))
    np.testing.assert_allclose(physical_lps(meta['affine'], (0, 11, 7))[:2], expected, atol=1e-6)
    # After a spatial TorchIO transform, a 2-D subject is still described in 2-D. TorchIO's
    # transforms see 2-D subjects in TorchIO's 2-D layout (W, H, 1): crop 1 column, 2 rows.
    cropped = pt.PyableDataset(manifest, transforms=tio.Crop((1, 0, 2, 0, 0, 0)))[0]
    assert cropped['images'].shape == (1, 1, 28, 19)
    assert cropped['meta']['size'] == (19, 28)
    assert cropped['meta']['origin'] == pytest.approx(image2d.TransformIndexToPhysicalPoint((1, 2)))


def test_subjects_with_different_spacing_and_orientation(tmp_path):
    axial = synthetic.phantom((16, 14, 10), (1.0, 1.0, 2.0), seed=1)
    oblique = synthetic.phantom((12, 12, 12), (1.5, 1.2, 1.1), (4.0, -3.0, 2.0),
                                synthetic.oblique_direction(70.0, 'x'), seed=2)
    manifest = {'axial': {'images': [write(axial, tmp_path / 'axial.nii.gz')]},
                'oblique': {'images': [write(oblique, tmp_path / 'oblique.nii.gz')]}}
    dataset = pt.PyableDataset(manifest)
    for item, image in zip((dataset[0], dataset[1]), (axial, oblique)):
        grid = Grid.from_image(image)
        assert item['images'].shape[1:] == grid.shape_zyx
        assert item['meta']['direction'] == pytest.approx(image.GetDirection())
        assert item['meta']['spacing'] == pytest.approx(image.GetSpacing())
        np.testing.assert_array_equal(item['images'][0].numpy(), sitk.GetArrayFromImage(image))
        corner = image.TransformIndexToPhysicalPoint([n - 1 for n in image.GetSize()])
        last = [n - 1 for n in grid.shape_zyx]
        np.testing.assert_allclose(physical_lps(item['meta']['affine'], last), corner, atol=1e-6)
    assert dataset[1]['meta']['orientation'] != dataset[0]['meta']['orientation']


def test_missing_file_at_construction_names_subject_and_path(tmp_path):
    t1 = write(synthetic.phantom((8, 8, 8)), tmp_path / 't1.nii.gz')
    missing = tmp_path / 'gone_roi.nii.gz'
    with pytest.raises(pt.ManifestError) as error:
        pt.PyableDataset({'sub-x': {'images': [t1], 'rois': [str(missing)]}})
    assert 'sub-x' in str(error.value) and str(missing) in str(error.value)


def test_file_removed_after_construction_names_subject_and_path(tmp_path):
    t1 = write(synthetic.phantom((8, 8, 8)), tmp_path / 't1.nii.gz')
    t2 = write(synthetic.phantom((8, 8, 8), seed=3), tmp_path / 't2.nii.gz')
    dataset = pt.PyableDataset({'sub-y': {'images': [t1, t2]}})
    (tmp_path / 't2.nii.gz').unlink()
    with pytest.raises(pt.PyableTioError) as error:
        dataset[0]
    assert 'sub-y' in str(error.value) and 't2.nii.gz' in str(error.value)


def test_subject_whose_images_disagree_in_dimension(tmp_path):
    t1 = write(synthetic.phantom((8, 8, 8)), tmp_path / 't1.nii.gz')
    flat = write(sitk.Image([8, 8], sitk.sitkFloat32), tmp_path / 'flat.nii.gz')
    with pytest.raises(pt.ManifestError) as error:
        pt.PyableDataset({'sub-z': {'images': [t1, flat]}})
    message = str(error.value)
    assert 'sub-z' in message and 'flat.nii.gz' in message and 'dimension' in message
