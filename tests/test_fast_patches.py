"""PatchQueue: patches cut in workers (from the readers' arrays) equal TorchIO's patches."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from conftest import crop
from pyable_tio import synthetic
from pyable_tio.patching.cutting import SubjectPatches

PATCH = (4, 8, 6)  # D, H, W
LABELS = set(synthetic.LABEL_VALUES)
SHAPE = (12, 18, 20)  # D, H, W of the synthetic T1




def test_queue_from_manifest_chooses_the_fast_queue_without_whole_volume_steps(manifest):
    kwargs = dict(patch_size=PATCH, samples_per_volume=1, max_length=2)
    assert isinstance(pt.queue_from_manifest(manifest, **kwargs), pt.patching.queue.PatchQueue)
    flipped = pt.queue_from_manifest(manifest, transform=tio.RandomFlip(), **kwargs)
    assert isinstance(flipped, pt.patching.queue.PatchQueue) and flipped.threads  # a flip runs per patch
    moved = pt.queue_from_manifest(manifest, transform=tio.RandomMotion(), **kwargs)
    assert type(moved) is tio.Queue  # nothing of it runs per patch
    assert type(pt.queue_from_manifest(manifest, fast_patches=False, **kwargs)) is tio.Queue
    assert isinstance(pt.queue_from_manifest(manifest, transform=tio.RandomMotion(), fast_patches=True, **kwargs),
                      pt.patching.queue.PatchQueue)


@pytest.mark.parametrize('sampler', ['uniform', 'label'])
def test_lazy_patches_are_torchio_patches(manifest, full_subjects, sampler):
    """Same seed, same locations, data, affines, keys and history as TorchIO's sampler on the loaded subject."""
    subjects = pt.subjects_from_manifest(manifest)
    patch_sampler = pt.queues.make_sampler(sampler, PATCH, 'labelmap_0', subjects[0])
    patches = SubjectPatches(tio.SubjectsDataset(subjects), patch_sampler, samples_per_volume=5)
    assert patches.reads_lazily()
    for index, subject in enumerate(subjects):
        torch.manual_seed(index)
        fast = patches[index]
        assert not subject['images']._loaded  # the lazy path never loads the subject's volumes
        torch.manual_seed(index)
        expected = list(patch_sampler(full_subjects[subject['id']], 5))
        assert len(fast) == len(expected) == 5
        for ours, theirs in zip(fast, expected):
            assert list(ours.keys()) == list(theirs.keys())
            assert torch.equal(ours[tio.LOCATION], theirs[tio.LOCATION])
            for name in ('images', 'labelmap_0', 'roi_0'):
                assert type(ours[name]) is type(theirs[name])
                assert ours[name].data.dtype == theirs[name].data.dtype
                assert torch.equal(ours[name].data, theirs[name].data)
                np.testing.assert_array_equal(ours[name].affine, theirs[name].affine)
            assert ours['meta'] == theirs['meta'] and ours['age'] == theirs['age']
            assert ours.applied_transforms == theirs.applied_transforms
            if sampler == 'label':
                assert ours['labelmap_0'].data.any()


def test_patch_affine_is_physically_right(manifest, full_subjects):
    """A patch's first voxel sits where the T1's voxel at the patch location is (RAS = -L, -P, S)."""
    subjects = pt.subjects_from_manifest(manifest)
    patches = SubjectPatches(tio.SubjectsDataset(subjects), tio.UniformSampler(PATCH), samples_per_volume=4)
    t1 = sitk.ReadImage(subjects[0]['meta']['source_paths']['images'][0])
    for patch in patches[0]:
        d, h, w = (int(v) for v in patch[tio.LOCATION][:3])
        lps = np.array(t1.TransformIndexToPhysicalPoint((w, h, d)))
        ras = lps * [-1, -1, 1]
        for name in ('images', 'labelmap_0'):
            np.testing.assert_allclose(patch[name].affine[:3, 3], ras, atol=1e-6)
            np.testing.assert_allclose(patch[name].affine[:3, :3], full_subjects['sub-00'][name].affine[:3, :3])


@pytest.mark.parametrize('sampler', ['uniform', 'label', 'weighted'])
def test_patch_queue_with_workers(manifest, full_subjects, sampler):
    # max_length 4 < 3 patches x 3 subjects: subjects' patches are split across fills (not
    # shuffled, so that the epoch ends with the last subject's leftover, as in tio.Queue).
    queue = pt.queue_from_manifest(
        manifest, patch_size=PATCH, samples_per_volume=3, max_length=4, sampler=sampler,
        label_name=None if sampler == 'uniform' else 'labelmap_0', num_workers=2, shuffle_patches=False,
    )
    assert isinstance(queue, pt.patching.queue.PatchQueue) and len(queue) == 9
    counts = {}
    for batch in tio.SubjectsLoader(queue, batch_size=3):
        images, labels = batch['images'][tio.DATA], batch['labelmap_0'][tio.DATA]
        assert images.shape == (3, 2, *PATCH) and labels.shape == (3, 1, *PATCH)
        assert labels.dtype == torch.uint8
        for i, subject_id in enumerate(batch['id']):
            counts[subject_id] = counts.get(subject_id, 0) + 1
            location = batch[tio.LOCATION][i]
            full = full_subjects[subject_id]
            assert torch.equal(images[i], crop(full['images'].data, location))
            assert torch.equal(labels[i], crop(full['labelmap_0'].data, location))
            assert set(torch.unique(labels[i]).tolist()) <= LABELS
            if sampler != 'uniform':
                assert labels[i].any()
    assert counts == {'sub-00': 3, 'sub-01': 3, 'sub-02': 3}  # one epoch: every subject, 3 patches each


def test_two_epochs_and_num_samples_attribute(manifest):
    subjects = pt.subjects_from_manifest(manifest)
    subjects[1]['num_samples'] = 1  # tio.Queue's per-subject override
    subjects[1].update_attributes()
    queue = pt.patching.queue.PatchQueue(tio.SubjectsDataset(subjects), 5, 2, tio.UniformSampler(PATCH), num_workers=2)
    assert len(queue) == 5
    loader = tio.SubjectsLoader(queue, batch_size=1)
    for _ in range(2):
        ids = sorted(batch['id'][0] for batch in loader)
        assert ids == ['sub-00', 'sub-00', 'sub-01', 'sub-02', 'sub-02']


def test_transform_loads_the_subject_in_the_worker(manifest):
    # RandomMotion needs the whole volume: it runs in the worker, then RescaleIntensity per patch.
    transform = tio.Compose([tio.RandomMotion(degrees=1, translation=1), tio.RescaleIntensity(out_min_max=(0, 1))])
    queue = pt.queue_from_manifest(
        manifest, patch_size=PATCH, samples_per_volume=2, max_length=6, num_workers=2,
        transform=transform, fast_patches=True,
    )
    assert isinstance(queue, pt.patching.queue.PatchQueue) and not queue.threads  # worker processes load + transform
    batches = list(tio.SubjectsLoader(queue, batch_size=2))
    assert len(batches) == 3
    for batch in batches:
        images = batch['images'][tio.DATA]
        assert images.shape == (2, 2, *PATCH) and images.min() >= 0 and images.max() <= 1
    # The patches carry the subject's history as tio.Queue's do: the transform, then the crop.
    patch = SubjectPatches(queue.subjects_dataset, queue.sampler, 1)[0][0]
    assert [name for name, _ in patch.applied_transforms] == ['Motion', 'RescaleIntensity', 'Crop']


def test_custom_sampler_falls_back_to_loading(manifest, full_subjects):
    class Corner(tio.UniformSampler):
        def _generate_patches(self, subject, num_patches=None):
            for _ in range(num_patches):
                yield self.extract_patch(subject, (0, 0, 0))

    subjects = pt.subjects_from_manifest(manifest)
    patches = SubjectPatches(tio.SubjectsDataset(subjects), Corner(PATCH), samples_per_volume=2)
    assert not patches.reads_lazily()
    for patch in patches[2]:
        assert patch[tio.LOCATION].tolist() == [0, 0, 0, *PATCH]
        assert torch.equal(patch['images'].data, crop(full_subjects['sub-02']['images'].data, [0, 0, 0, *PATCH]))


def test_memory_mapped_reader_is_read_lazily(tmp_path):
    """A reader returning a memory map: patches copy only their region and leave the file untouched."""
    array = np.arange(np.prod((1, *SHAPE)), dtype=np.float32).reshape(1, *SHAPE)
    path = tmp_path / 'volume.npy'
    np.save(path, array)

    def reader(file):
        return np.load(file, mmap_mode='r'), np.diag([2.0, 1.0, 1.0, 1.0])

    subject = tio.Subject(t=tio.ScalarImage(path, reader=reader), id='s')
    patches = SubjectPatches(tio.SubjectsDataset([subject]), tio.UniformSampler(PATCH), samples_per_volume=3)
    for patch in patches[0]:
        location = patch[tio.LOCATION]
        assert torch.equal(patch['t'].data, crop(torch.from_numpy(array), location))
        patch['t'].data.zero_()  # writable, and a copy
        assert patch['t'].affine[0, 3] == 2.0 * int(location[0])
    np.testing.assert_array_equal(np.load(path), array)


def test_images_on_different_grids_are_refused(tmp_path):
    subject = tio.Subject(
        a=tio.ScalarImage(tensor=torch.zeros(1, *SHAPE)), b=tio.ScalarImage(tensor=torch.zeros(1, 10, 10, 10)),
    )
    patches = SubjectPatches(tio.SubjectsDataset([subject]), tio.UniformSampler(PATCH), samples_per_volume=1)
    with pytest.raises(RuntimeError, match='spatial shapes'):
        patches[0]


@pytest.mark.parametrize('threads', [True, False])
def test_threads_and_processes_give_the_same_crops(manifest, full_subjects, threads):
    """Lazy patches cut by threads, or by worker processes (shared-memory tensors)."""
    subjects = pt.subjects_from_manifest(manifest)
    queue = pt.patching.queue.PatchQueue(tio.SubjectsDataset(subjects), 6, 2, tio.LabelSampler(PATCH, 'labelmap_0'),
                          num_workers=2, threads=threads)
    assert queue.threads is threads
    seen = 0
    for batch in tio.SubjectsLoader(queue, batch_size=2):
        for i, subject_id in enumerate(batch['id']):
            full = full_subjects[subject_id]
            location = batch[tio.LOCATION][i]
            assert torch.equal(batch['images'][tio.DATA][i], crop(full['images'].data, location))
            assert torch.equal(batch['roi_0'][tio.DATA][i], crop(full['roi_0'].data, location))
            assert batch['labelmap_0'][tio.DATA][i].any()
            seen += 1
    assert seen == 6


@pytest.mark.parametrize('threads', [True, False])
def test_a_seed_gives_the_same_patches(manifest, threads):
    def locations():
        torch.manual_seed(7)
        queue = pt.patching.queue.PatchQueue(tio.SubjectsDataset(pt.subjects_from_manifest(manifest)), 9, 3,
                              tio.UniformSampler(PATCH), num_workers=2, threads=threads)
        return [(b['id'][0], b[tio.LOCATION][0].tolist()) for b in tio.SubjectsLoader(queue, batch_size=1)]

    first = locations()
    assert len(first) == 9 and first == locations()


def test_cached_volumes_are_cut_from_their_memory_maps(manifest, full_subjects, tmp_path):
    kwargs = dict(patch_size=PATCH, samples_per_volume=2, max_length=6, sampler='label',
                  label_name='labelmap_0', num_workers=2, cache_dir=tmp_path / 'cache')
    for epoch in ('cold', 'warm'):
        queue = pt.queue_from_manifest(manifest, **kwargs)
        assert isinstance(queue, pt.patching.queue.PatchQueue) and queue.threads
        seen = 0
        for batch in tio.SubjectsLoader(queue, batch_size=3):
            for i, subject_id in enumerate(batch['id']):
                full, location = full_subjects[subject_id], batch[tio.LOCATION][i]
                for name in ('images', 'labelmap_0', 'roi_0'):
                    assert torch.equal(batch[name][tio.DATA][i], crop(full[name].data, location))
                seen += 1
        assert seen == 6
    image = queue.subjects_dataset.dry_iter()[0]['images']
    assert isinstance(image.reader(image.path[0])[0], np.memmap)  # a hit: what the patches were cut from


def test_threaded_label_draws_cover_torchio_probability_map():
    """Threads draw label centres uniformly among the voxels TorchIO's map gives a probability."""
    label = torch.zeros(1, 10, 9, 8, dtype=torch.uint8)
    label[0, 1, 4, 4] = 1  # too close to the border for a 4 x 4 x 4 patch: never a centre
    label[0, 4:6, 3:5, 4] = 7
    label[0, 6, 6, 5] = 2
    subject = tio.Subject(t=tio.ScalarImage(tensor=torch.rand(1, 10, 9, 8)), seg=tio.LabelMap(tensor=label))
    sampler = tio.LabelSampler(4, 'seg')
    expected = sampler.process_probability_map(sampler.get_probability_map(subject), subject)
    patches = SubjectPatches(tio.SubjectsDataset([subject]), sampler, samples_per_volume=600)
    centres = [tuple((p[tio.LOCATION][:3] + 2).tolist()) for p in patches.patches(0, torch.Generator().manual_seed(0))]
    counts = {c: centres.count(c) for c in set(centres)}
    assert set(counts) == {tuple(int(i) for i in v) for v in np.argwhere(expected > 0)}  # 5 voxels
    assert min(counts.values()) > 600 / 5 / 2  # about uniform, as TorchIO's binary map
    for patch in patches.patches(0, torch.Generator().manual_seed(1))[:5]:
        centre = tuple(int(v) for v in patch[tio.LOCATION][:3] + 2)
        assert label[(0, *centre)] > 0 and torch.equal(patch['seg'].data, crop(label, patch[tio.LOCATION]))


def test_torchio_default_reader_and_stacked_files(tmp_path):
    """Plain TorchIO images (its own reader, two files stacked as channels) are cut alike."""
    paths = []
    for i in range(2):
        paths.append(tmp_path / f'{i}.nii.gz')
        sitk.WriteImage(synthetic.phantom(size=(20, 18, 12), seed=i), str(paths[-1]))
    subject = tio.Subject(t=tio.ScalarImage(paths))
    loaded = tio.Subject(t=tio.ScalarImage(paths))
    loaded.load()
    patches = SubjectPatches(tio.SubjectsDataset([subject]), tio.UniformSampler(PATCH), samples_per_volume=3)
    torch.manual_seed(3)
    ours = patches[0]
    torch.manual_seed(3)
    for patch, expected in zip(ours, tio.UniformSampler(PATCH)(loaded, 3)):
        assert patch['t'].data.shape == (2, *PATCH)
        assert torch.equal(patch['t'].data, expected['t'].data)
        np.testing.assert_array_equal(patch['t'].affine, expected['t'].affine)


def test_a_worker_thread_error_reaches_the_training_loop(tmp_path):
    manifest = synthetic.write_dataset(tmp_path, num_subjects=2, size=(20, 18, 12))
    subjects = pt.subjects_from_manifest(manifest)
    (tmp_path / 'sub-01_t2.nii.gz').write_bytes(b'not an image')  # broken after the headers were read
    queue = pt.patching.queue.PatchQueue(tio.SubjectsDataset(subjects), 4, 2, tio.UniformSampler(PATCH), num_workers=2)
    with pytest.raises(pt.LoadError, match=r'sub-01.*sub-01_t2\.nii\.gz.*unreadable'):
        list(tio.SubjectsLoader(queue, batch_size=2))


def test_more_patches_per_subject_than_the_queue_holds(manifest):
    subjects = pt.subjects_from_manifest(manifest)
    queue = pt.patching.queue.PatchQueue(tio.SubjectsDataset(subjects), 3, 7, tio.UniformSampler(PATCH), num_workers=2,
                          shuffle_subjects=False, shuffle_patches=False)
    assert len(queue) == 21
    for _ in range(2):
        ids = [batch['id'][0] for batch in tio.SubjectsLoader(queue, batch_size=1)]
        assert ids == ['sub-00'] * 7 + ['sub-01'] * 7 + ['sub-02'] * 7
