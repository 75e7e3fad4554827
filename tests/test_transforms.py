"""pyable_tio.transforms: layout guard, seed transforms, adapter, 2-D, validation mode."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio import transforms as T

LABELS = set(synthetic.LABEL_VALUES)
PATCH = (4, 6, 5)


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    """Three subjects: T1 (18 x 16 x 12, 1.0 x 1.0 x 1.8 mm), oblique T2, labels, ROI."""
    folder = tmp_path_factory.mktemp('transforms')
    return synthetic.write_dataset(folder, num_subjects=3, size=(18, 16, 12), spacing=(1.0, 1.0, 1.8))


@pytest.fixture
def subject(manifest) -> tio.Subject:
    """A stacked 2-channel subject (T1 + resampled oblique T2), label map and ROI, loaded."""
    subject = pt.subjects_from_manifest(manifest)[0]
    subject.load()
    return subject


@pytest.fixture(scope='module')
def manifest_2d(tmp_path_factory):
    folder = tmp_path_factory.mktemp('transforms_2d')
    entries = {}
    for i in range(2):
        image = synthetic.phantom(size=(20, 16), spacing=(1.0, 1.2), origin=(3.0, -2.0), seed=i)
        paths = {'images': [str(folder / f'{i}.nii.gz')], 'labelmaps': [str(folder / f'{i}_lab.nii.gz')]}
        sitk.WriteImage(image, paths['images'][0])
        sitk.WriteImage(synthetic.label_map(image), paths['labelmaps'][0])
        entries[f's{i}'] = paths
    return entries


@pytest.fixture
def subject_2d(manifest_2d) -> tio.Subject:
    subject = pt.subjects_from_manifest(manifest_2d)[0]
    subject.load()
    return subject


@pytest.fixture
def native_2d(manifest_2d) -> tio.Subject:
    """The same 2-D files through TorchIO's own reader: C x W x H x 1."""
    entry = manifest_2d['s0']
    return tio.Subject(images=tio.ScalarImage(entry['images'][0]), labelmap_0=tio.LabelMap(entry['labelmaps'][0]))


def assert_label_valued(subject: tio.Subject) -> None:
    for key in ('labelmap_0', 'roi_0'):
        if key in subject:
            allowed = LABELS if key == 'labelmap_0' else {0, 1}
            assert set(torch.unique(subject[key].data).tolist()) <= allowed, key


def assert_same_subject(a: tio.Subject, b: tio.Subject) -> None:
    for key, image in b.get_images_dict(intensity_only=False).items():
        assert torch.equal(a[key].data, image.data), key
        np.testing.assert_allclose(a[key].affine, image.affine, atol=1e-9, err_msg=key)


# --- layout guard ---------------------------------------------------------------------------


@pytest.mark.parametrize('reorder', [tio.ToCanonical(), tio.ToOrientation('ILA'), tio.Transpose()], ids=str)
def test_guard_restores_the_zyx_tensors_exactly(subject, reorder):
    reordered = reorder(subject)
    assert not T.is_zyx(reordered)
    with pytest.raises(T.LayoutError, match=r'subject "sub-00": image "images": axes are in orientation'):
        T.check_zyx(reordered)
    restored = T.ToZYX()(reordered)
    assert T.is_zyx(restored)
    T.check_zyx(restored)
    assert_same_subject(restored, subject)


def test_guard_restores_2d_tensors(subject_2d):
    transposed = tio.Transpose()(subject_2d)
    assert transposed['images'].data.shape == (1, 20, 16, 1)
    assert_same_subject(T.ToZYX()(transposed), subject_2d)


def test_guard_keeps_the_physical_point_of_every_voxel(subject):
    """A voxel's RAS point (affine @ index) holds the same value before and after guard(canonical)."""
    canonical = T.ToZYX()(tio.ToCanonical()(subject))
    zyx = subject['labelmap_0']
    index = np.array([3, 5, 7, 1.0])
    np.testing.assert_allclose(canonical['labelmap_0'].affine @ index, zyx.affine @ index)
    # And against SimpleITK's own index-to-point of the file on disk (x,y,z index order).
    path = subject['meta']['source_paths']['labelmaps'][0]
    on_disk = sitk.ReadImage(path)
    lps = np.asarray(on_disk.TransformIndexToPhysicalPoint([7, 5, 3]))
    np.testing.assert_allclose((zyx.affine @ index)[:3], lps * [-1, -1, 1], atol=1e-4)
    assert canonical['labelmap_0'].data[0, 3, 5, 7] == sitk.GetArrayViewFromImage(on_disk)[3, 5, 7]


def test_guard_is_a_no_op_on_zyx_and_keeps_flips(subject):
    flipped = tio.Flip(axes=(1,))(subject)  # content flip: affine kept, still Z,Y,X
    assert T.is_zyx(flipped)
    guarded = T.ToZYX()(flipped)
    assert_same_subject(guarded, flipped)
    assert [type(t).__name__ for t in guarded.get_composed_history()] == ['Flip']  # no-op not recorded
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert_same_subject(guarded.apply_inverse_transform(), subject)
    transposed = T.ToZYX()(tio.Transpose()(subject))
    assert [type(t).__name__ for t in transposed.get_composed_history()] == ['Transpose', 'ToZYX']


def test_guard_refuses_what_it_cannot_restore(subject, tmp_path):
    other = synthetic.phantom((10, 9, 8), (1.5, 1.5, 2.0), direction=synthetic.oblique_direction(30, 'z'))
    sitk.WriteImage(other, str(tmp_path / 'other.nii.gz'))
    resampled = tio.Resample(str(tmp_path / 'other.nii.gz'))(subject)
    with pytest.raises(T.LayoutError, match=r'subject "sub-00": image "images": .* not a permutation'):
        T.ToZYX()(resampled)
    bare = tio.Subject(image=tio.ScalarImage(tensor=torch.zeros(1, 2, 3, 4)))
    with pytest.raises(T.LayoutError, match='no "meta" reference grid'):
        T.ToZYX()(bare)


def test_dataset_and_queue_outputs_are_always_zyx(manifest):
    reference = pt.subjects_from_manifest(manifest)
    for subject in reference:
        subject.load()
    dataset = pt.dataset_from_manifest(manifest, transform=tio.ToCanonical())
    sample = dataset[0]
    assert T.is_zyx(sample)
    assert_same_subject(sample, reference[0])
    queue = pt.queue_from_manifest(
        manifest, patch_size=PATCH, samples_per_volume=2, max_length=6, transform=tio.Transpose(),
        shuffle_subjects=False, shuffle_patches=False,
    )
    by_id = {s['id']: s for s in reference}
    for patch in (queue[i] for i in range(6)):
        assert patch['images'].data.shape == (2, *PATCH)
        d0, h0, w0, d1, h1, w1 = patch[tio.LOCATION].tolist()
        full = by_id[patch['id']]['images'].data
        assert torch.equal(patch['images'].data, full[:, d0:d1, h0:h1, w0:w1])


def test_dataset_raises_a_clear_error_when_a_transform_leaves_the_grid(manifest, tmp_path):
    other = synthetic.phantom((10, 9, 8), (1.5, 1.5, 2.0), direction=synthetic.oblique_direction(30, 'z'))
    sitk.WriteImage(other, str(tmp_path / 'other.nii.gz'))
    dataset = pt.dataset_from_manifest(manifest, transform=tio.Resample(str(tmp_path / 'other.nii.gz')))
    with pytest.raises(T.LayoutError, match='subject "sub-00"'):
        dataset[0]


def test_guard_wraps_plain_callables(manifest):
    dataset = pt.dataset_from_manifest(manifest, transform=transpose_callable)
    assert T.is_zyx(dataset[0])


def transpose_callable(subject: tio.Subject) -> tio.Subject:
    return tio.Transpose()(subject)


# --- seed transforms ------------------------------------------------------------------------


@pytest.mark.parametrize('mask', [None, 'roi_0'])
def test_intensity_normalization_is_per_channel(subject, mask):
    out = T.IntensityNormalization(mask=mask)(subject)
    roi = subject['roi_0'].data[0]
    inside = torch.ones_like(roi, dtype=torch.bool) if mask is None else roi > 0
    for channel in range(2):
        values = out['images'].data[channel][inside]
        assert abs(float(values.mean())) < 1e-4
        assert abs(float(values.std()) - 1) < 1e-4
    if mask is None:  # TorchIO's ZNormalization uses one mean/std for both channels
        joint = tio.ZNormalization()(subject)['images'].data
        assert not torch.allclose(joint, out['images'].data, atol=1e-3)
    else:  # and cannot apply a 1-channel mask to a 2-channel image
        with pytest.raises(IndexError):
            tio.ZNormalization(masking_method=mask)(subject)
    assert torch.equal(out['labelmap_0'].data, subject['labelmap_0'].data)
    assert isinstance(out.get_composed_history()[0], T.IntensityNormalization)


def test_intensity_normalization_errors(subject):
    with pytest.raises(ValueError, match='mask "roi_9" is not a subject key'):
        T.IntensityNormalization(mask='roi_9')(subject)
    # An all-zero mask (missing="empty"'s filler) means "no mask": the whole image's statistics.
    subject['roi_0'].set_data(torch.zeros_like(subject['roi_0'].data))
    out = T.IntensityNormalization(mask='roi_0')(subject)
    assert torch.allclose(out['images'].data, T.IntensityNormalization()(subject)['images'].data)
    subject['images'].set_data(torch.ones_like(subject['images'].data))
    with pytest.raises(ValueError, match=r'subject "sub-00": image "images" channel 0: cannot z-score'):
        T.IntensityNormalization(mask='roi_0')(subject)


def test_random_flip_on_named_axes(subject):
    out = T.RandomFlip(axes=('H', 'W'), p_axis=1)(subject)
    for key in ('images', 'labelmap_0', 'roi_0'):
        assert torch.equal(out[key].data, torch.flip(subject[key].data, (2, 3)))
        assert np.allclose(out[key].affine, subject[key].affine)
    assert isinstance(out.get_composed_history()[0], tio.Flip)
    assert_label_valued(out)
    untouched = T.RandomFlip(axes='D', p_axis=0)(subject)
    assert torch.equal(untouched['images'].data, subject['images'].data)
    with pytest.raises(ValueError, match='axes must be "D", "H", "W"'):
        T.RandomFlip(axes='LR')


def test_random_flip_draws_each_axis(subject):
    flipped_axes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = T.RandomFlip(p_axis=0.5)(subject)
        history = out.get_composed_history()
        axes = tuple(history[0].axes) if len(history) else ()
        expected = torch.flip(subject['labelmap_0'].data, [a + 1 for a in axes]) if axes else subject['labelmap_0'].data
        assert torch.equal(out['labelmap_0'].data, expected)
        flipped_axes.update(axes)
    assert flipped_axes == {0, 1, 2}


def test_rotation90_in_the_h_w_plane(subject):
    for k in range(4):
        out = T.Rotation90(k)(subject)
        for key in ('images', 'labelmap_0'):
            assert torch.equal(out[key].data, torch.rot90(subject[key].data, k, dims=(2, 3)))
        assert_label_valued(out)
        back = out.apply_inverse_transform(warn=False)
        assert torch.equal(back['labelmap_0'].data, subject['labelmap_0'].data)
    torch.manual_seed(0)
    ks = {T.RandomRotation90()(subject).get_composed_history()[0].k for _ in range(20)}
    assert ks <= {0, 1, 2, 3} and len(ks) > 1


def quarter_turn_matrix(units: np.ndarray, k: int) -> np.ndarray:
    """World (RAS) rotation by k x 90 degrees about the D axis, taking the H direction towards W."""
    h, w = units[:, 1], units[:, 2]
    angle = k * np.pi / 2
    return np.eye(3) + np.sin(angle) * (np.outer(w, h) - np.outer(h, w)) + (np.cos(angle) - 1) * (
        np.outer(h, h) + np.outer(w, w))


@pytest.mark.parametrize('k', [1, 2, 3])
def test_rotation90_with_unequal_spacings_is_a_rigid_turn_in_world_space(subject_2d, tmp_path, k):
    """H and W spacings differ (1.2 / 1.0 mm): the tensor turns, the affine follows, nothing is stretched."""
    # An oblique 3-D volume with three different spacings and an asymmetric label map.
    volume = synthetic.phantom((18, 14, 6), (0.8, 1.3, 2.0), origin=(4.0, -3.0, 7.0),
                               direction=synthetic.oblique_direction(20, 'x'), seed=3)
    sitk.WriteImage(volume, str(tmp_path / 't1.nii.gz'))
    sitk.WriteImage(synthetic.label_map(volume), str(tmp_path / 'lab.nii.gz'))
    manifest = {'s': {'images': [str(tmp_path / 't1.nii.gz')], 'labelmaps': [str(tmp_path / 'lab.nii.gz')]}}
    for subject in (pt.subjects_from_manifest(manifest)[0], subject_2d):
        subject.load()
        out = T.Rotation90(k)(subject)
        before, after = subject['labelmap_0'], out['labelmap_0']
        d, h, w = before.spatial_shape
        assert after.spatial_shape == ((d, w, h) if k % 2 else (d, h, w))
        assert torch.equal(after.data, torch.rot90(before.data, k, dims=(2, 3)))
        # Each array axis keeps its direction and the spacing of the voxels it now holds.
        units = before.affine[:3, :3] / np.linalg.norm(before.affine[:3, :3], axis=0)
        np.testing.assert_allclose(after.affine[:3, :3] / after.spacing, units, atol=1e-9)
        spacing = np.asarray(before.spacing)
        np.testing.assert_allclose(after.spacing, spacing[[0, 2, 1]] if k % 2 else spacing, atol=1e-9)
        assert T.is_zyx(out)  # the layout guard accepts it as it is
        # Physically: resampling the input through the world rotation about the centre (SimpleITK,
        # nearest neighbour) onto the output's own grid gives the output, voxel for voxel.
        centre = before.affine @ np.append((np.asarray(before.spatial_shape) - 1) / 2, 1)
        rotation = quarter_turn_matrix(units, k)
        lps = np.diag([-1.0, -1.0, 1.0])
        turn = sitk.AffineTransform(3)
        turn.SetMatrix((lps @ rotation.T @ lps).ravel().tolist())  # output point -> input point
        turn.SetCenter((lps @ centre[:3]).tolist())
        resampled = sitk.Resample(before.as_sitk(), after.as_sitk(), turn, sitk.sitkNearestNeighbor, -1)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled).T, after.data[0].numpy())
        for key in ('images', 'labelmap_0'):
            np.testing.assert_allclose(out[key].affine, after.affine, atol=1e-9)
        # Invertible: the inverse gives back the tensors and the affine.
        back = out.apply_inverse_transform(warn=False)
        assert_same_subject(back, subject)


# --- adapter and Compose --------------------------------------------------------------------


def flip_w(images, rois, labelmaps, meta):
    """Seed-style callable: flip every tensor along W (x)."""
    assert tuple(meta['size']) == (18, 16, 12) and meta['axis_order'] == 'xyz'
    assert isinstance(images, torch.Tensor) and images.shape == (2, 12, 16, 18)
    flip = lambda tensors: [torch.flip(t, (-1,)) for t in tensors]  # noqa: E731
    return torch.flip(images, (-1,)), flip(rois), flip(labelmaps)


def blur_labels(images, rois, labelmaps, meta):
    return images, rois, [(a + torch.roll(a, 1, dims=2)) / 2 for a in labelmaps]


def drop_roi(images, rois, labelmaps, meta):
    return images, [], labelmaps


def crop_images(images, rois, labelmaps, meta):
    return images[:, 1:], rois, labelmaps


def images_only(images, rois, labelmaps, meta):
    return images


def test_callable_transform_matches_torchio_flip(subject):
    out = T.CallableTransform(flip_w)(subject)
    expected = tio.Flip(axes=(2,))(subject)  # tensor axis 2 = W on our layout
    assert_same_subject(out, expected)
    assert out['labelmap_0'].data.dtype == subject['labelmap_0'].data.dtype
    assert isinstance(out.get_composed_history()[0], T.CallableTransform)


@pytest.mark.parametrize('function, message', [
    (blur_labels, r'"labelmap_0": new values .* labels must not be interpolated'),
    (drop_roi, 'returned 0 rois, expected 1'),
    (crop_images, r'"images": returned images of shape \(2, 11, 16, 18\), expected \(2, 12, 16, 18\)'),
])
def test_callable_transform_errors(subject, function, message):
    with pytest.raises(ValueError, match=message):
        T.CallableTransform(function)(subject)
    with pytest.raises(TypeError, match=r'subject "sub-00": transform images_only: must return \(images, rois'):
        T.CallableTransform(images_only)(subject)


def test_compose_mixes_callables_and_torchio(subject):
    transform = T.Compose([flip_w, T.IntensityNormalization(), tio.Flip(axes=(2,))])
    out = transform(subject)
    assert torch.equal(out['labelmap_0'].data, subject['labelmap_0'].data)  # two flips
    history = out.get_composed_history()
    assert [type(t).__name__ for t in history] == ['CallableTransform', 'IntensityNormalization', 'Flip']
    with pytest.raises(TypeError, match='TorchIO transforms or callables'):
        T.Compose([flip_w, 3])


# --- 2-D ------------------------------------------------------------------------------------


def test_2d_layout_is_not_torchio_2d(subject_2d, native_2d):
    assert subject_2d['images'].data.shape == (1, 1, 16, 20)
    assert not subject_2d['images'].is_2d() and native_2d['images'].is_2d()
    assert T.slice_normal_axis(subject_2d) == 2
    assert T.slice_normal_axis(tio.Subject(a=tio.ScalarImage(tensor=torch.zeros(1, 3, 4, 5)))) is None


def background_fraction(subject: tio.Subject) -> float:
    return float((subject['labelmap_0'].data == 0).float().mean())


@pytest.mark.filterwarnings("ignore:The maximum displacement is larger")
@pytest.mark.parametrize('ours, theirs', [
    (T.RandomAffine(degrees=30, scales=0.2), tio.RandomAffine(degrees=30, scales=0.2)),
    (T.RandomElasticDeformation(5, max_displacement=3), tio.RandomElasticDeformation(5, max_displacement=3)),
], ids=['RandomAffine', 'RandomElasticDeformation'])
def test_2d_spatial_transforms_stay_in_plane(subject_2d, native_2d, ours, theirs):
    """Ours on C x 1 x H x W == TorchIO's own 2-D handling on C x W x H x 1; TorchIO's on ours leaves the plane."""
    baseline = background_fraction(subject_2d)
    out_of_plane = []
    for seed in range(3):
        torch.manual_seed(seed)
        fixed = ours(subject_2d)
        torch.manual_seed(seed)
        native = theirs(native_2d)
        for key in ('images', 'labelmap_0'):
            torch.testing.assert_close(fixed[key].data.float(), native[key].data.permute(0, 3, 2, 1).float())
        assert set(torch.unique(fixed['labelmap_0'].data).tolist()) <= LABELS
        torch.manual_seed(seed)
        out_of_plane.append(background_fraction(theirs(subject_2d)))
    assert max(out_of_plane) > baseline + 0.1  # the unguarded TorchIO transform loses the slice


def test_2d_axis_choices_skip_the_depth_axis(subject_2d):
    for seed in range(6):
        torch.manual_seed(seed)
        out = T.RandomAnisotropy(downsampling=2)(subject_2d)
        assert out.get_composed_history()[0].target[0] == 1.0  # D spacing never downsampled
        torch.manual_seed(seed)
        ghost = T.RandomGhosting(num_ghosts=2, intensity=0.8)(subject_2d).get_composed_history()[0]
        assert ghost.axis['images'] in (1, 2)
        torch.manual_seed(seed)
        motion = T.RandomMotion(degrees=10, translation=5)(subject_2d).get_composed_history()[0]
        assert np.all(motion.degrees['images'][:, :2] == 0) and np.all(motion.translation['images'][:, 2] == 0)
    with pytest.raises(ValueError, match='leave no in-plane axis'):
        T.RandomAnisotropy(axes=(0,))(subject_2d)
    # 3-D subjects: exactly TorchIO's behaviour.
    three_d = tio.Subject(a=tio.ScalarImage(tensor=torch.rand(1, 6, 7, 8)))
    torch.manual_seed(1)
    ours = T.RandomMotion()(three_d)
    torch.manual_seed(1)
    assert torch.equal(ours['a'].data, tio.RandomMotion()(three_d)['a'].data)


def test_2d_flips_and_queue_patches(manifest_2d, subject_2d):
    with pytest.raises(ValueError, match='negative'):  # TorchIO's default axis 0 is D here: size 1
        tio.RandomFlip(axes=(0,), flip_probability=1)(subject_2d)
    flipped = T.RandomFlip(p_axis=1)(subject_2d)  # ours skips D on a single slice
    assert torch.equal(flipped['images'].data, torch.flip(subject_2d['images'].data, (2, 3)))
    lr = tio.RandomFlip(axes=('LR',), flip_probability=1)(subject_2d)
    assert torch.equal(lr['images'].data, torch.flip(subject_2d['images'].data, (3,)))  # x = W
    queue = pt.queue_from_manifest(
        manifest_2d, patch_size=(1, 8, 10), samples_per_volume=2, max_length=4, sampler='label',
        transform=T.Compose([T.RandomAffine(degrees=20), T.RandomFlip(('H', 'W'))]),
    )
    batch = next(iter(tio.SubjectsLoader(queue, batch_size=4)))
    assert batch['images'][tio.DATA].shape == (4, 1, 1, 8, 10)
    assert set(torch.unique(batch['labelmap_0'][tio.DATA]).tolist()) <= LABELS


# --- validation mode ------------------------------------------------------------------------


def patches_of_one_epoch(queue) -> list[tuple]:
    loader = tio.SubjectsLoader(queue, batch_size=2, num_workers=0)
    return [
        (tuple(batch['id']), batch[tio.LOCATION].clone(), batch['images'][tio.DATA].clone())
        for batch in loader
    ]


def assert_same_patches(a, b) -> None:
    assert len(a) == len(b)
    for (ids_a, loc_a, data_a), (ids_b, loc_b, data_b) in zip(a, b):
        assert ids_a == ids_b
        assert torch.equal(loc_a, loc_b)
        assert torch.equal(data_a, data_b)


@pytest.mark.parametrize('augment', [True, False], ids=['tio.Queue+transform', 'PatchQueue'])
def test_same_seed_same_patches_with_workers(manifest, augment):
    transform = T.Compose([T.RandomAffine(degrees=10), T.RandomFlip(), tio.RandomNoise()]) if augment else None

    def build():
        return pt.queue_from_manifest(
            manifest, patch_size=PATCH, samples_per_volume=2, max_length=4, num_workers=2,
            transform=transform, sampler='label',
        )

    T.seed_everything(0)
    first_queue = build()
    first = patches_of_one_epoch(first_queue)
    T.seed_everything(0)
    assert_same_patches(patches_of_one_epoch(build()), first)
    T.seed_everything(1)
    other = patches_of_one_epoch(build())
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(first, other))
    # Replays tio.Queue's worker processes and PatchQueue's worker threads alike.
    assert isinstance(first_queue, pt.patching.queue.PatchQueue) != augment
    assert_same_patches(patches_of_one_epoch(T.reset_queue(first_queue, 0)), first)
    assert_same_patches(patches_of_one_epoch(T.reset_queue(first_queue, 0)), first)


def test_reset_queue_refuses_a_patch_queue_with_worker_processes(manifest):
    queue = pt.queue_from_manifest(
        manifest, patch_size=PATCH, samples_per_volume=2, max_length=4, num_workers=2,
        transform=T.RandomRotation90(), fast_patches=True,  # a whole-volume step: processes
    )
    assert isinstance(queue, pt.patching.queue.PatchQueue) and not queue.threads
    with pytest.raises(ValueError, match='build a new queue'):
        T.reset_queue(queue, 0)


def test_reset_queue_replays_a_patch_queue_without_workers(manifest):
    queue = pt.queue_from_manifest(manifest, patch_size=PATCH, samples_per_volume=2, max_length=4, sampler='label')
    assert isinstance(queue, pt.patching.queue.PatchQueue)
    first = patches_of_one_epoch(T.reset_queue(queue, 3))
    assert_same_patches(patches_of_one_epoch(T.reset_queue(queue, 3)), first)
    assert_same_patches(patches_of_one_epoch(T.reset_queue(queue, 3)), first)


def test_seeded_loader_with_workers(manifest):
    dataset = pt.dataset_from_manifest(manifest, transform=T.Compose([T.RandomFlip(), tio.RandomNoise()]))

    def epoch(seed):
        loader = T.seeded_loader(dataset, seed, batch_size=1, num_workers=2, shuffle=True)
        return [(batch['id'][0], batch['images'][tio.DATA].clone()) for batch in loader]

    first, again, other = epoch(5), epoch(5), epoch(6)
    assert [i for i, _ in first] == [i for i, _ in again]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again))
    assert any(not torch.equal(a, b) for (_, a), (_, b) in zip(first, other))
    with pytest.raises(TypeError, match='reset_queue needs a tio.Queue'):
        T.reset_queue(dataset, 0)


# --- MONAI through tio.MonaiAdapter ---------------------------------------------------------


def test_monai_transforms_through_the_adapter(manifest, subject):
    monai_transforms = pytest.importorskip('monai.transforms')
    keys = ['images', 'labelmap_0', 'roi_0']
    reoriented = tio.MonaiAdapter(monai_transforms.Orientationd(keys=keys, axcodes='RAS'))(subject)
    assert not T.is_zyx(reoriented)
    assert_same_subject(T.ToZYX()(reoriented), subject)  # the guard undoes MONAI's reordering too
    normalized = tio.MonaiAdapter(monai_transforms.NormalizeIntensityd(keys=['images'], channel_wise=True))(subject)
    np.testing.assert_allclose(normalized['images'].data.mean(dim=(1, 2, 3)), 0, atol=1e-4)
    assert T.is_zyx(normalized)
    # MONAI's spatial augmentation rewrites the affine onto a rotated grid; in our datasets it keeps
    # the subject's grid as TorchIO's augmentations do (tests/test_monai.py checks the content).
    rotate = monai_transforms.RandAffined(keys=keys, prob=1, rotate_range=(0.3, 0.3, 0.3), mode='nearest')
    dataset = pt.dataset_from_manifest(manifest, transform=tio.MonaiAdapter(rotate))
    assert T.is_zyx(dataset[0])
    with pytest.raises(T.LayoutError, match='not a permutation of the Z,Y,X axes'):
        T.ToZYX()(tio.MonaiAdapter(rotate)(subject))  # a bare adapter still moves the grid


# --- the seed's callable contract (one for CallableTransform and PyableDataset) ----------------


def seed_random_flip(images, rois, labelmaps, meta):
    """The seed's RandomFlip, with the flip always drawn: torch.flip on the C x D x H x W tensor."""
    return torch.flip(images, dims=(3,)), [torch.flip(r, dims=(2,)) for r in rois], \
        [torch.flip(m, dims=(2,)) for m in labelmaps]


def tag_meta(images, rois, labelmaps, meta):
    return images, rois, labelmaps, {**meta, 'augmented': True, 'spacing': (9.0, 9.0, 9.0)}


def doc_seed_functions() -> dict:
    """Every ``def f(images, rois, labelmaps, meta)`` of a python block in README.md and docs/*.md."""
    import ast
    import pathlib
    import re
    import textwrap

    root = pathlib.Path(__file__).resolve().parents[1]
    found = {}
    for path in [root / 'README.md', *sorted((root / 'docs').glob('*.md'))]:
        for block in re.findall(r'```python\n(.*?)```', path.read_text(), flags=re.S):
            if 'labelmaps, meta)' not in block:
                continue
            tree = ast.parse(textwrap.dedent(block))  # a block that does not parse fails here
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and [a.arg for a in node.args.args] == [
                        'images', 'rois', 'labelmaps', 'meta']:
                    namespace = {'torch': torch, 'np': np, 'T': T}  # T: decorators (T.changes_labels)
                    exec(compile(ast.Module([node], []), str(path), 'exec'), namespace)  # noqa: S102
                    found[f'{path.name}:{node.name}'] = namespace[node.name]
    return found


def test_seed_callables_get_tensors_in_both_paths(manifest, subject):
    """The seed's RandomFlip (torch.flip) runs in CallableTransform and in PyableDataset, equal to tio.Flip."""
    out = T.CallableTransform(seed_random_flip)(subject)
    assert_same_subject(out, tio.Flip(axes=(2,))(subject))
    plain = pt.PyableDataset(manifest)[0]
    item = pt.PyableDataset(manifest, transforms=seed_random_flip)[0]
    assert torch.equal(item['images'], torch.flip(plain['images'], (3,)))
    assert torch.equal(item['labelmaps'][0], torch.flip(plain['labelmaps'][0], (2,)))
    # The same function after a transform that reorders axes still gets D, H, W.
    canonical = pt.PyableDataset(manifest, transforms=[tio.ToCanonical(), flip_w, tio.RandomNoise(std=0)])[0]
    assert torch.equal(canonical['images'], item['images'])
    # A returned meta reaches the item, except the geometry, which describes the tensors.
    tagged = pt.PyableDataset(manifest, transforms=tag_meta)[0]
    assert tagged['meta']['augmented'] is True and tagged['meta']['spacing'] == plain['meta']['spacing']
    with pytest.raises(TypeError, match=r'subject "sub-00": transform images_only: must return'):
        pt.PyableDataset(manifest, transforms=images_only)[0]


def test_every_doc_seed_callable_runs_in_both_paths(manifest, subject):
    functions = doc_seed_functions()
    assert {'README.md:zscore', 'API.md:flip_w', 'TRANSFORMS_GUIDE.md:swap_lr'} <= set(functions)
    for name, function in functions.items():
        through_subject = T.CallableTransform(function)(subject)
        item = pt.PyableDataset(manifest, transforms=function)[0]
        assert torch.equal(item['images'], through_subject['images'].data), name
        assert torch.equal(item['labelmaps'][0], through_subject['labelmap_0'].data[0]), name


# --- TorchIO's own transforms on 2-D subjects, through the dataset and queue wrapper -------------


def assert_same_world(ours: tio.Image, theirs: tio.Image) -> None:
    """Every voxel of ``ours`` sits on a voxel of ``theirs`` (by the affines) and holds its value."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in ours.spatial_shape], indexing='ij'), -1).reshape(-1, 3)
    world = ours.affine @ np.c_[index, np.ones(len(index))].T
    other = (np.linalg.inv(theirs.affine) @ world)[:3].T
    np.testing.assert_allclose(other, np.round(other), atol=1e-4)
    other = np.round(other).astype(int)
    assert (other >= 0).all() and (other < theirs.spatial_shape).all()
    for channel in range(ours.data.shape[0]):
        torch.testing.assert_close(ours.data[channel][tuple(index.T)].float(),
                                   theirs.data[channel][tuple(other.T)].float())


def replay_on_native(sample: tio.Subject, native: tio.Subject) -> tio.Subject:
    """The parameters TorchIO drew for ``sample``, applied by TorchIO to its own 2-D images."""
    layout = ('ToTorchIO2D', 'FromTorchIO2D', 'ToZYX')
    history = [t for t in sample.get_composed_history() if type(t).__name__ not in layout]
    assert history, 'no TorchIO transform recorded'
    return tio.Compose(history)(native)


@pytest.mark.filterwarnings("ignore:The maximum displacement is larger")
@pytest.mark.parametrize('make', [
    lambda: tio.RandomAffine(degrees=30, scales=0.2),
    lambda: tio.RandomElasticDeformation(5, max_displacement=3),
], ids=['RandomAffine', 'RandomElasticDeformation'])
def test_torchio_transforms_see_2d_subjects_as_torchio_2d(manifest_2d, subject_2d, native_2d, make):
    """Plain TorchIO transforms through dataset_from_manifest == TorchIO's own result on the 2-D file."""
    dataset = pt.dataset_from_manifest(manifest_2d, transform=make())
    for seed in range(3):
        torch.manual_seed(seed)
        sample = dataset[0]
        assert sample['images'].data.shape == (1, 1, 16, 20) and T.is_zyx(sample)
        names = [type(t).__name__ for t in sample.get_composed_history()]
        assert names[0] == 'ToTorchIO2D' and names[-1] == 'FromTorchIO2D'
        native = replay_on_native(sample, native_2d)
        for key in ('images', 'labelmap_0'):
            assert_same_world(sample[key], native[key])
        assert set(torch.unique(sample['labelmap_0'].data).tolist()) <= LABELS
        assert background_fraction(sample) < background_fraction(subject_2d) + 0.1  # stays in plane


def test_torchio_random_flip_on_2d_subjects(manifest_2d, subject_2d):
    """tio.RandomFlip() (axis 0 = TorchIO's first axis, W = x on 2-D images) works and is invertible."""
    dataset = pt.dataset_from_manifest(manifest_2d, transform=tio.RandomFlip())
    plain, flipped = subject_2d['images'].data, torch.flip(subject_2d['images'].data, (3,))
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        sample = dataset[0]
        is_flipped = torch.equal(sample['images'].data, flipped)
        assert is_flipped or torch.equal(sample['images'].data, plain)
        np.testing.assert_allclose(sample['images'].affine, subject_2d['images'].affine, atol=1e-9)
        seen.add(is_flipped)
        back = sample.apply_inverse_transform(warn=False)
        assert torch.equal(back['labelmap_0'].data, subject_2d['labelmap_0'].data)
    assert seen == {True, False}
    # PyableDataset wraps its transforms the same way.
    item = pt.PyableDataset(manifest_2d, transforms=tio.RandomFlip(flip_probability=1))[0]
    assert torch.equal(item['images'], flipped)


def test_queue_patches_come_from_in_plane_torchio_transforms(manifest_2d, native_2d):
    """queue_from_manifest with a plain tio.RandomAffine: patches are crops of TorchIO's own 2-D result."""
    affine = tio.RandomAffine(degrees=(20, 20, 20, 20, 30, 30), scales=0)  # fixed: 20 deg about x and y, 30 about z
    queue = pt.queue_from_manifest(
        {'s0': manifest_2d['s0']}, patch_size=(1, 8, 10), samples_per_volume=3, max_length=3,
        transform=affine, shuffle_subjects=False, shuffle_patches=False,
    )
    native = tio.Affine(scales=1, degrees=(20, 20, 30), translation=0)(native_2d)  # TorchIO keeps z only
    whole = {key: native[key].data.permute(0, 3, 2, 1) for key in ('images', 'labelmap_0')}
    for patch in (queue[i] for i in range(3)):
        d0, h0, w0, d1, h1, w1 = patch[tio.LOCATION].tolist()
        for key, data in whole.items():
            torch.testing.assert_close(patch[key].data.float(), data[:, d0:d1, h0:h1, w0:w1].float())
