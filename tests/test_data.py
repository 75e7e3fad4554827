"""Datasets and patch queues from manifests, with TorchIO loaders and workers."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from conftest import crop
from pyable_tio import synthetic

PATCH = (4, 8, 6)  # D, H, W
LABELS = set(synthetic.LABEL_VALUES)




@pytest.mark.parametrize('sampler', ['uniform', 'label', 'weighted'])
def test_queue_patches_come_from_the_subjects(manifest, full_subjects, sampler):
    queue = pt.queue_from_manifest(
        manifest, patch_size=PATCH, samples_per_volume=3, max_length=9, sampler=sampler,
        num_workers=2, label_name=None if sampler == 'uniform' else 'labelmap_0',
    )
    loader = tio.SubjectsLoader(queue, batch_size=3)
    seen = 0
    for batch in loader:
        images = batch['images'][tio.DATA]
        labels = batch['labelmap_0'][tio.DATA]
        assert images.shape == (3, 2, *PATCH)
        assert labels.shape == (3, 1, *PATCH)
        for i in range(3):
            location = batch[tio.LOCATION][i]
            assert tuple((location[3:] - location[:3]).tolist()) == PATCH
            full = full_subjects[batch['id'][i]]
            assert torch.equal(images[i], crop(full['images'].data, location))
            assert torch.equal(labels[i], crop(full['labelmap_0'].data, location))
            assert set(torch.unique(labels[i]).tolist()) <= LABELS
            if sampler != 'uniform':
                assert labels[i].any()  # centred where the label (probability) map is positive
            seen += 1
    assert seen == 9


def test_queue_default_label_name_and_2d_patches(tmp_path):
    paths = []
    for i in range(2):
        image = synthetic.phantom(size=(24, 20), spacing=(1.0, 1.0), seed=i)
        paths.append({
            'images': [str(tmp_path / f'{i}.nii.gz')],
            'rois': [str(tmp_path / f'{i}_roi.nii.gz')],
        })
        sitk.WriteImage(image, paths[-1]['images'][0])
        sitk.WriteImage(sitk.Cast(image > 60, sitk.sitkUInt8), paths[-1]['rois'][0])
    queue = pt.queue_from_manifest(
        {f's{i}': entry for i, entry in enumerate(paths)},
        patch_size=(1, 8, 10), samples_per_volume=2, max_length=4, sampler='label',
    )
    batch = next(iter(tio.SubjectsLoader(queue, batch_size=4)))
    assert batch['images'][tio.DATA].shape == (4, 1, 1, 8, 10)
    assert all(roi.any() for roi in batch['roi_0'][tio.DATA])


def test_plain_dataloader_with_workers(manifest, full_subjects):
    dataset = pt.dataset_from_manifest(manifest)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
    ids = []
    for batch in loader:
        subject_id = batch['id'][0]
        ids.append(subject_id)
        images = batch['images'][tio.DATA]
        assert images.shape == (1, 2, 12, 18, 20)
        assert torch.equal(images[0], full_subjects[subject_id]['images'].data)
    assert ids == list(full_subjects)


def test_queue_with_subject_sampler(manifest):
    # Rank 0 of 3 replicas over 3 subjects sees only the first subject.
    sampler = torch.utils.data.distributed.DistributedSampler(range(3), num_replicas=3, rank=0, shuffle=False)
    queue = pt.queue_from_manifest(
        manifest, patch_size=PATCH, samples_per_volume=2, max_length=4, subject_sampler=sampler,
    )
    ids = [batch['id'][0] for batch in tio.SubjectsLoader(queue, batch_size=1)]
    assert ids == ['sub-00', 'sub-00']


def test_random_spatial_transforms_keep_labels_discrete(manifest, full_subjects):
    transform = tio.Compose([tio.RandomAffine(degrees=25, scales=0.2), tio.RandomFlip(axes=('LR',))])
    dataset = pt.dataset_from_manifest(manifest, transform=transform)
    torch.manual_seed(0)
    for subject in dataset:
        original = full_subjects[subject['id']]
        assert not torch.equal(subject['labelmap_0'].data, original['labelmap_0'].data)  # it did move
        assert set(torch.unique(subject['labelmap_0'].data).tolist()) <= LABELS
        assert set(torch.unique(subject['roi_0'].data).tolist()) <= {0, 1}
        assert subject['images'].data.shape == (2, 12, 18, 20)
        assert [t.name for t in subject.get_applied_transforms()][0] == 'Affine'


def test_patch_larger_than_a_subject(manifest):
    with pytest.raises(pt.ManifestError) as info:
        pt.queue_from_manifest(manifest, patch_size=(13, 8, 8), samples_per_volume=1, max_length=1)
    message = str(info.value)
    assert 'sub-00' in message and 'patch_size' in message and '(12, 18, 20)' in message


def test_bad_sampler_and_label_name(manifest, tmp_path):
    with pytest.raises(ValueError, match='sampler'):
        pt.queue_from_manifest(manifest, patch_size=4, samples_per_volume=1, max_length=1, sampler='grid')
    with pytest.raises(ValueError, match='nolabel'):
        pt.queue_from_manifest(
            manifest, patch_size=4, samples_per_volume=1, max_length=1, sampler='label', label_name='nolabel',
        )
    with pytest.raises(ValueError, match='patch_size'):
        pt.queue_from_manifest(manifest, patch_size=(4, 4), samples_per_volume=1, max_length=1)
    image = str(tmp_path / 'plain.nii.gz')
    sitk.WriteImage(synthetic.phantom(size=(10, 10, 10)), image)
    with pytest.raises(ValueError, match='label map'):
        pt.queue_from_manifest([image], patch_size=4, samples_per_volume=1, max_length=1, sampler='weighted')


def test_label_name_parses_the_manifest_once_and_keeps_its_problems(manifest, monkeypatch):
    import json

    from pyable_tio import manifest as manifest_package

    real, calls = manifest_package._rows, []

    def rows(source):
        calls.append(source)
        return real(source)

    monkeypatch.setattr(manifest_package, '_rows', rows)
    queue = pt.queue_from_manifest(manifest, patch_size=4, samples_per_volume=1, max_length=1,
                                   sampler='label', label_name='labelmap_0', missing='error')
    assert len(calls) == 1 and len(queue.subjects_dataset) == 3
    # A subject with a structural problem is still reported (its problems travel with the parse).
    bad = {**json.loads(manifest.read_text()), 'sub-bad': {'images': []}}
    broken = manifest.with_name('broken.json')
    broken.write_text(json.dumps(bad))
    with pytest.raises(pt.ManifestError, match='subject "sub-bad": .*field "images": no images listed'):
        pt.queue_from_manifest(broken, patch_size=4, samples_per_volume=1, max_length=1,
                               sampler='label', label_name='labelmap_0', missing='error')


def test_make_sampler_prefers_label_maps(full_subjects):
    subject = next(iter(full_subjects.values()))
    sampler = pt.queues.make_sampler('label', PATCH, None, subject)
    assert isinstance(sampler, tio.LabelSampler) and sampler.probability_map_name == 'labelmap_0'
    weighted = pt.queues.make_sampler('weighted', PATCH, 'roi_0', subject)
    assert isinstance(weighted, tio.WeightedSampler) and weighted.probability_map_name == 'roi_0'
    custom = tio.UniformSampler(PATCH)
    assert pt.queues.make_sampler(custom, PATCH, None, subject) is custom
    np.testing.assert_array_equal(sampler.patch_size, PATCH)


def test_queue_options_are_one_frozen_reusable_object(manifest):
    from pyable_tio.queues import QueueOptions
    from pyable_tio.subjects import SubjectOptions

    options = QueueOptions(sampler='label', label_name='labelmap_0', shuffle_subjects=False, shuffle_patches=False)
    sizes = dict(patch_size=4, samples_per_volume=2, max_length=6)
    by_object = pt.queue_from_manifest(manifest, **sizes, queue=options, options=SubjectOptions(missing='error'))
    by_name = pt.queue_from_manifest(manifest, **sizes, sampler='label', label_name='labelmap_0',
                                     shuffle_subjects=False, shuffle_patches=False)
    assert isinstance(by_object.sampler, type(by_name.sampler)) and by_object.sampler.probability_map_name == 'labelmap_0'
    assert [s['id'] for s in by_object.subjects_dataset.dry_iter()] == [s['id'] for s in by_name.subjects_dataset.dry_iter()]
    # Checked when made, before any header is read; an unknown name lists both kinds of options.
    with pytest.raises(ValueError, match='sampler must be one of'):
        QueueOptions(sampler='grid')
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['samplr'\]; the queue options are: .*sampler"):
        pt.queue_from_manifest(manifest, **sizes, samplr='label')



def test_queue_takes_missing_from_the_subject_options(manifest):
    """``options=SubjectOptions(missing="empty")`` fills the missing ROIs; the queue's own option wins."""
    import json
    import os

    from pyable_tio.errors import ManifestError
    from pyable_tio.queues import QueueOptions
    from pyable_tio.subjects import SubjectOptions

    with open(manifest) as file:
        data = json.load(file)
    first, second = sorted(data)[:2]
    data = {first: data[first], second: {**data[second], 'rois': []}}  # 1 and 0 ROIs
    sizes = dict(patch_size=4, samples_per_volume=2, max_length=4)
    options = SubjectOptions(missing='empty', root=os.path.dirname(manifest))
    queue = pt.queue_from_manifest(data, **sizes, options=options)
    assert [sorted(k for k in s if k.startswith('roi_')) for s in queue.subjects_dataset.dry_iter()] == [['roi_0']] * 2
    with pytest.raises(ManifestError, match='different numbers of rois'):
        pt.queue_from_manifest(data, **sizes, options=options, missing='error')
    assert QueueOptions().missing is None  # None: the subject options', else "error"
    with pytest.raises(ManifestError, match='different numbers of rois'):
        pt.queue_from_manifest(data, **sizes, root=os.path.dirname(manifest))
    with pytest.raises(ValueError, match='missing must be "error" or "empty"'):
        QueueOptions(missing='keep')