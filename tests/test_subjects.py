"""subjects_from_manifest: one geometry per subject, reference choice, names, meta, build errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.io import backend
from pyable_tio.geometry.grid import Grid

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def three_grids(tmp_path, prefix='s'):
    """Three images of one anatomy on different grids; the second has the most voxels."""
    a = synthetic.phantom(size=(16, 14, 10), spacing=(1.2, 1.2, 2.0), seed=1)
    b = synthetic.phantom(
        size=(22, 20, 12), spacing=(0.9, 0.9, 1.6), origin=(-2.0, 1.0, 0.5),
        direction=synthetic.oblique_direction(20.0, 'z'), seed=2,
    )
    c = synthetic.phantom(
        size=(12, 12, 12), spacing=(1.6, 1.5, 1.7), origin=(1.0, -1.0, 2.0),
        direction=synthetic.oblique_direction(-15.0, 'x'), seed=3,
    )
    return [write(image, tmp_path / f'{prefix}_{i}.nii.gz') for i, image in enumerate((a, b, c))]


def grid_of(path) -> Grid:
    return Grid.from_image(sitk.ReadImage(str(path)))


def assert_on_grid(image: tio.Image, grid: Grid):
    assert image.data.shape[1:] == grid.shape_zyx
    np.testing.assert_allclose(image.affine, grid.affine_zyx(), atol=1e-6)


def test_entries_of_a_subject_share_the_reference_geometry(tmp_path):
    paths = three_grids(tmp_path)
    labels = write(synthetic.label_map(sitk.ReadImage(paths[2])), tmp_path / 'labels.nii.gz')
    roi = write(sitk.Cast(sitk.ReadImage(paths[1]) > 50, sitk.sitkUInt8), tmp_path / 'roi.nii.gz')
    manifest = {'s': {'images': paths, 'rois': [roi], 'labelmaps': [labels]}}
    for stack in (True, False):
        subject = pt.subjects_from_manifest(manifest, stack_channels=stack)[0]
        subject.load()
        reference = grid_of(paths[0])
        for image in subject.get_images(intensity_only=False):
            assert_on_grid(image, reference)
        # The voxel centre of the last voxel is where SimpleITK says it is.
        d, h, w = reference.shape_zyx
        corner = subject.get_first_image().affine @ np.array([d - 1, h - 1, w - 1, 1.0])
        ref_image = sitk.ReadImage(paths[0])
        expected = LPS_TO_RAS * np.asarray(ref_image.TransformIndexToPhysicalPoint((w - 1, h - 1, d - 1)))
        np.testing.assert_allclose(corner[:3], expected, atol=1e-6)


@pytest.mark.parametrize('kind', ['dict', 'path'])
def test_global_reference_space_puts_all_subjects_on_one_grid(tmp_path, kind):
    first = three_grids(tmp_path, 'a')
    second = three_grids(tmp_path, 'b')[::-1]
    target = Grid((14, 12, 9), (1.4, 1.3, 2.1), (-3.0, -2.0, 1.0), synthetic.oblique_direction(10.0, 'y'))
    if kind == 'dict':
        space = target.to_dict()  # x,y,z order
    else:
        space = write(target.empty_image(), tmp_path / 'space.nii.gz')
        target = grid_of(space)  # as stored (NIfTI keeps geometry in float32)
    subjects = pt.subjects_from_manifest({'a': first, 'b': second}, reference_space=space)
    for subject in subjects:
        assert_on_grid(subject['images'], target)
        assert subject['meta']['size'] == target.size
        expected = sitk.Resample(sitk.ReadImage(subject['meta']['source_paths']['images'][0]),
                                 target.empty_image(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        np.testing.assert_allclose(subject['images'].data[0].numpy(), sitk.GetArrayFromImage(expected), atol=1e-5)
    assert 'reference_space' in subjects[0]['meta']['reference_used'] or kind == 'path'
    if kind == 'path':
        assert subjects[0]['meta']['reference_used'] == space


def reference_grid(subject) -> Grid:
    meta = subject['meta']
    return Grid(meta['size'], meta['spacing'], meta['origin'], meta['direction'])


@pytest.mark.parametrize(
    ('selector', 'expected_index'),
    [
        ('first', 0), (2, 2), (1, 1), ('largest', 1), (lambda headers: len(headers) - 1, 2),
        (np.int64(2), 2), (lambda headers: np.argmax([h.grid.num_voxels for h in headers]), 1),
    ],
)
def test_reference_selector(tmp_path, selector, expected_index):
    paths = three_grids(tmp_path)
    subject = pt.subjects_from_manifest({'s': paths}, reference=selector)[0]
    assert reference_grid(subject).matches(grid_of(paths[expected_index]))
    assert subject['meta']['reference_used'] == paths[expected_index]
    assert_on_grid(subject['images'], grid_of(paths[expected_index]))
    # The reference channel passes through untouched.
    expected = sitk.GetArrayFromImage(sitk.ReadImage(paths[expected_index]))
    assert np.array_equal(subject['images'].data[expected_index].numpy(), expected)


def test_callable_selector_receives_image_headers(tmp_path):
    paths = three_grids(tmp_path)
    seen = []

    def smallest_spacing_z(headers):
        seen.append(headers)
        return min(range(len(headers)), key=lambda i: headers[i].grid.spacing[2])

    subject = pt.subjects_from_manifest({'s': paths}, reference=smallest_spacing_z)[0]
    headers = seen[0]
    assert all(isinstance(h, pt.geometry.reference.ImageHeader) for h in headers)
    assert [str(h.path) for h in headers] == paths
    assert headers[1].grid.size == (22, 20, 12)
    assert subject['meta']['reference_used'] == paths[1]


def test_manifest_reference_wins_and_global_space_overrides(tmp_path):
    a = three_grids(tmp_path, 'a')
    b = three_grids(tmp_path, 'b')
    manifest = {
        'a': {'images': a, 'reference': 2},
        'b': {'images': b, 'reference': b[1]},
        'c': {'images': a},
    }
    subjects = pt.subjects_from_manifest(manifest, reference='first')
    assert reference_grid(subjects[0]).matches(grid_of(a[2]))
    assert subjects[0]['meta']['reference_used'] == a[2]
    assert reference_grid(subjects[1]).matches(grid_of(b[1]))
    assert subjects[1]['meta']['reference_used'] == b[1]
    assert reference_grid(subjects[2]).matches(grid_of(a[0]))
    target = Grid((8, 9, 10), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    overridden = pt.subjects_from_manifest(manifest, reference='largest', reference_space=target)
    for subject in overridden:
        assert reference_grid(subject).matches(target)
        assert subject['meta']['reference_used'] != a[2]
        assert_on_grid(subject['images'], target)


def test_building_reads_headers_only(tmp_path, monkeypatch):
    paths = three_grids(tmp_path)
    labels = write(synthetic.label_map(sitk.ReadImage(paths[0])), tmp_path / 'labels.nii.gz')
    calls = []

    def refuse(*args, **kwargs):
        raise AssertionError('voxel data read while building subjects')

    with monkeypatch.context() as patch:
        patch.setattr(sitk, 'ReadImage', refuse)
        patch.setattr(backend, 'load', refuse)
        patch.setattr(sitk.ImageFileReader, 'Execute', refuse)
        subjects = pt.subjects_from_manifest({'s': {'images': paths, 'labelmaps': [labels]}}, reference='largest')
    real_load = backend.load

    def counting_load(path, role):
        calls.append((str(path), role))
        return real_load(path, role)

    monkeypatch.setattr(backend, 'load', counting_load)
    subjects[0].load()
    assert sorted(calls) == sorted([(p, 'image') for p in paths] + [(labels, 'labelmap')])


def test_names_and_meta(tmp_path):
    images = [
        write(synthetic.phantom(size=(10, 9, 8), seed=s), tmp_path / f'img{s}.nii.gz') for s in range(3)
    ]
    rois = [write(sitk.Cast(sitk.ReadImage(images[0]) > 60, sitk.sitkUInt8), tmp_path / 'roi.nii.gz')]
    labels = [write(synthetic.label_map(sitk.ReadImage(images[0])), tmp_path / 'lab.nii.gz')]
    manifest = {'p1': {'images': images, 'rois': rois, 'labelmaps': labels, 'label': 1}}
    stacked = pt.subjects_from_manifest(manifest)[0]
    assert stacked['images'].data.shape == (3, 8, 9, 10)
    assert stacked['id'] == 'p1'
    assert isinstance(stacked['roi_0'], tio.LabelMap) and isinstance(stacked['labelmap_0'], tio.LabelMap)
    assert 'image_0' not in stacked
    meta = stacked['meta']
    assert {'spacing', 'origin', 'direction', 'orientation', 'source_paths', 'reference_used',
            'transforms_applied'} <= set(meta)
    assert meta['orientation'] == 'LPS'
    assert meta['spacing'] == (1.0, 1.0, 1.5) and meta['origin'] == (0.0, 0.0, 0.0)
    assert meta['direction'] == tuple(np.eye(3).ravel())
    assert meta['source_paths'] == {'images': images, 'rois': rois, 'labelmaps': labels}
    assert meta['reference_used'] == images[0]
    assert meta['transforms_applied'] == []
    split = pt.subjects_from_manifest(manifest, stack_channels=False)[0]
    assert 'images' not in split
    for i in range(3):
        expected = sitk.GetArrayFromImage(sitk.ReadImage(images[i]))
        assert np.array_equal(split[f'image_{i}'].data[0].numpy(), expected)
    assert 'image_3' not in split
    assert split['label'] == 1 and split.label == 1


def test_transforms_applied_are_reported(tmp_path):
    path = write(synthetic.phantom(size=(10, 9, 8)), tmp_path / 'img.nii.gz')
    tfm = tmp_path / 'shift.tfm'
    sitk.WriteTransform(sitk.TranslationTransform(3, (1.0, 0.0, 0.0)), str(tfm))
    subject = pt.subjects_from_manifest({'s': {'images': [path], 'transforms': [str(tfm)]}})[0]
    assert subject['meta']['transforms_applied'] == [f'all files: {tfm}']


def test_two_dimensional_subject(tmp_path):
    image = synthetic.phantom(size=(32, 24), spacing=(0.8, 1.1), origin=(3.0, -2.0))
    other = synthetic.phantom(size=(20, 16), spacing=(1.3, 1.6), origin=(1.0, 0.0), seed=4)
    labels = synthetic.label_map(other)
    manifest = {'flat': {
        'images': [write(image, tmp_path / 'a.nii.gz'), write(other, tmp_path / 'b.nii.gz')],
        'labelmaps': [write(labels, tmp_path / 'l.nii.gz')],
    }}
    subject = pt.subjects_from_manifest(manifest)[0]
    assert subject['images'].data.shape == (2, 1, 24, 32)
    assert subject['labelmap_0'].data.shape == (1, 1, 24, 32)
    assert set(np.unique(subject['labelmap_0'].data.numpy())) <= set(synthetic.LABEL_VALUES)
    affine = subject['images'].affine
    np.testing.assert_array_equal(affine, subject['labelmap_0'].affine)
    for x, y in [(0, 0), (31, 0), (5, 23), (17, 11)]:
        point = image.TransformIndexToPhysicalPoint((x, y))
        np.testing.assert_allclose((affine @ [0, y, x, 1])[:3], LPS_TO_RAS * [point[0], point[1], 0.0], atol=1e-9)
    image, other = (sitk.ReadImage(p) for p in manifest['flat']['images'])
    expected = sitk.Resample(other, image, sitk.Transform(), sitk.sitkLinear, 0.0)
    np.testing.assert_allclose(subject['images'].data[1, 0].numpy(), sitk.GetArrayFromImage(expected), atol=1e-5)


# --- errors found while building ------------------------------------------------------------


def test_unreadable_image_is_reported_at_build(tmp_path):
    good = write(synthetic.phantom(size=(8, 8, 8)), tmp_path / 'good.nii.gz')
    bad = tmp_path / 'garbage.nii.gz'
    bad.write_bytes(b'this is not an image at all' * 20)
    with pytest.raises(pt.ManifestError) as info:
        pt.subjects_from_manifest({'sub-x': [good, str(bad)]})
    message = str(info.value)
    assert 'sub-x' in message and str(bad) in message and 'unreadable' in message


def test_heterogeneous_subjects_keep_their_own_keys(tmp_path):
    # The seed's CSV example: two images and a ROI for one subject, one image and no ROI for the other.
    image = synthetic.phantom(size=(10, 9, 8))
    roi = write(sitk.Cast(image > 60, sitk.sitkUInt8), tmp_path / 'roi.nii.gz')
    a, b = write(image, tmp_path / 'a.nii.gz'), write(image, tmp_path / 'b.nii.gz')
    manifest = {'full': {'images': [a, b], 'rois': [roi]}, 'bare': {'images': [a]}}
    subjects = pt.subjects_from_manifest(manifest)
    assert subjects[0]['images'].data.shape[0] == 2 and subjects[1]['images'].data.shape[0] == 1
    assert 'roi_0' in subjects[0] and 'roi_0' not in subjects[1]
    dataset = pt.dataset_from_manifest(manifest)
    assert 'roi_0' not in dataset[1] and dataset[0]['roi_0'].data.any()


def test_batches_need_uniform_subjects_named_with_the_fix(tmp_path):
    image = synthetic.phantom(size=(10, 9, 8))
    roi = write(sitk.Cast(image > 60, sitk.sitkUInt8), tmp_path / 'roi.nii.gz')
    manifest = {
        'with-roi': {'images': [write(image, tmp_path / 'a.nii.gz')], 'rois': [roi]},
        'without-roi': {'images': [write(image, tmp_path / 'b.nii.gz')]},
    }
    with pytest.raises(pt.ManifestError) as info:
        pt.subjects_from_manifest(manifest, missing='error')
    message = str(info.value)
    assert '"with-roi"' in message and '"without-roi"' in message and 'rois' in message
    assert 'missing="empty"' in message
    with pytest.raises(pt.ManifestError, match='missing="empty"'):  # queues batch: checked before training
        pt.queue_from_manifest(manifest, patch_size=4, samples_per_volume=1, max_length=2)
    subjects = pt.subjects_from_manifest(manifest, missing='empty')
    filled = subjects[1]['roi_0']
    assert isinstance(filled, tio.LabelMap)
    assert filled.data.shape == (1, 8, 9, 10) and not filled.data.any()
    np.testing.assert_array_equal(filled.affine, subjects[1]['images'].affine)
    assert subjects[0]['roi_0'].data.any()
    queue = pt.queue_from_manifest(manifest, patch_size=4, samples_per_volume=1, max_length=2, missing='empty')
    batch = next(iter(tio.SubjectsLoader(queue, batch_size=2)))
    assert batch['roi_0'][tio.DATA].shape[0] == 2


def test_different_numbers_of_channels(tmp_path):
    image = synthetic.phantom(size=(10, 9, 8))
    a, b = write(image, tmp_path / 'a.nii.gz'), write(image, tmp_path / 'b.nii.gz')
    assert len(pt.subjects_from_manifest({'one': [a], 'two': [a, b]})) == 2
    with pytest.raises(pt.ManifestError, match='"two".*"one"|"one".*"two"') as info:
        pt.subjects_from_manifest({'one': [a], 'two': [a, b]}, missing='empty')  # images are never filled
    assert 'channel' in str(info.value)


def test_mixed_2d_and_3d_in_one_subject(tmp_path):
    flat = write(synthetic.phantom(size=(12, 10)), tmp_path / 'flat.nii.gz')
    cube = write(synthetic.phantom(size=(12, 10, 6)), tmp_path / 'cube.nii.gz')
    with pytest.raises(pt.ManifestError) as info:
        pt.subjects_from_manifest({'mixed': [cube, flat]})
    message = str(info.value)
    assert 'mixed' in message and 'flat.nii.gz' in message and 'mismatched dimensions' in message


@pytest.mark.parametrize('extra', ['meta', 'image_0', 'load', 'items'])
def test_extra_field_clashing_with_subject_keys(tmp_path, extra):
    path = write(synthetic.phantom(size=(8, 8, 8)), tmp_path / 'a.nii.gz')
    with pytest.raises(pt.ManifestError) as info:
        pt.subjects_from_manifest({'clash': {'images': [path], extra: 1}}, stack_channels=False)
    assert 'clash' in str(info.value) and extra in str(info.value)


def test_extra_field_named_images_in_subjects_table(tmp_path):
    path = write(synthetic.phantom(size=(8, 8, 8)), tmp_path / 'a.nii.gz')
    (tmp_path / 'images.csv').write_text(f'id,sequence,path\ns1,t1,{path}\n')
    (tmp_path / 'subjects.csv').write_text('id,images,age\ns1,oops,30\n')
    for order in (['images.csv', 'subjects.csv'], ['subjects.csv', 'images.csv']):
        with pytest.raises(pt.ManifestError) as info:
            pt.subjects_from_manifest([tmp_path / name for name in order])
        assert 's1' in str(info.value) and 'images' in str(info.value)


def test_bad_options_are_rejected(tmp_path):
    path = write(synthetic.phantom(size=(8, 8, 8)), tmp_path / 'a.nii.gz')
    with pytest.raises(ValueError, match='missing'):
        pt.subjects_from_manifest([path], missing='skip')
    with pytest.raises(ValueError, match='interpolator'):
        pt.subjects_from_manifest([path], interpolator='cubic')
    with pytest.raises(pt.ManifestError, match='reference_space'):
        pt.subjects_from_manifest([path], reference_space={'size': [4, 4, 4]})
    with pytest.raises(pt.ManifestError, match='out of range'):
        pt.subjects_from_manifest([path], reference=3)
    with pytest.raises(ValueError, match='biggest'):
        pt.subjects_from_manifest([path], reference='biggest')


def test_json_manifest_end_to_end(tmp_path):
    manifest = synthetic.write_dataset(tmp_path, num_subjects=2, size=(16, 14, 10))
    subjects = pt.subjects_from_manifest(manifest)
    content = json.loads(manifest.read_text())
    assert [s['id'] for s in subjects] == list(content)
    for subject in subjects:
        assert subject['images'].data.shape == (2, 10, 14, 16)
        assert set(np.unique(subject['labelmap_0'].data.numpy())) <= set(synthetic.LABEL_VALUES)
        assert subject['age'] == content[subject['id']]['age']


def test_subject_options_are_one_frozen_reusable_object(tmp_path):
    from dataclasses import FrozenInstanceError

    from pyable_tio.subjects import SubjectOptions

    manifest = synthetic.write_dataset(tmp_path / 'data', num_subjects=2, size=(12, 10, 8))
    options = SubjectOptions(missing='error', interpolator='bspline', cache_dir=tmp_path / 'cache')
    with pytest.raises(FrozenInstanceError):
        options.missing = 'keep'
    by_object = pt.subjects_from_manifest(manifest, options)
    by_name = pt.subjects_from_manifest(manifest, missing='error', interpolator='bspline', cache_dir=tmp_path / 'cache')
    changed = pt.subjects_from_manifest(manifest, options, interpolator='linear')
    for a, b, c in zip(by_object, by_name, changed):
        np.testing.assert_array_equal(a['images'].data.numpy(), b['images'].data.numpy())
        assert a['images'].reader.interpolator == 'bspline' and c['images'].reader.interpolator == 'linear'
    # Checked when made, before any header is read; an unknown name lists the options.
    with pytest.raises(ValueError, match='interpolator'):
        SubjectOptions(interpolator='cubic')
    with pytest.raises(TypeError, match=r"unknown subject option\(s\) \['cache'\]; the options are: reference, "):
        pt.subjects_from_manifest(manifest, cache=tmp_path)
