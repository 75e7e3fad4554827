"""Planning before training: options checked before headers, batchability, patch sizes on the transform path."""

from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio
from torch.utils.data import DataLoader

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.queues import may_resize
from pyable_tio.checking.headers import CheckOptions
from pyable_tio.checking.validate import validate


def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture
def uneven(tmp_path):
    """Two subjects: two images and a ROI (10 x 9 x 8), one image and no ROI (12 x 11 x 6); x,y,z."""
    big = synthetic.phantom(size=(10, 9, 8), seed=1)
    small = synthetic.phantom(size=(12, 11, 6), seed=2)
    roi = write(sitk.Cast(big > 60, sitk.sitkUInt8), tmp_path / 'roi.nii.gz')
    return {
        'full': {'images': [write(big, tmp_path / 'a.nii.gz'), write(big, tmp_path / 'b.nii.gz')], 'rois': [roi]},
        'bare': {'images': [write(small, tmp_path / 'c.nii.gz')]},
    }


@pytest.fixture
def no_headers(monkeypatch):
    """Fail the test if any image header is read."""
    def refuse(path):
        raise AssertionError(f'header of {path} read before the options were checked')

    monkeypatch.setattr('pyable_tio.checking.headers.ImageHeader.read', refuse)


@pytest.mark.parametrize('options, message', [
    ({'reference': 'largset'}, 'largset'),
    ({'missing': 'fill'}, 'missing'),
    ({'orientation': 'XYZ'}, 'orientation'),
    ({'align': 'elastic'}, 'align'),
    ({'preprocess': ['n4', 'bet']}, "unknown preprocessing step 'bet'"),
    ({'preprocess': [{'name': 'n4', 'shrinks': 2}]}, 'takes parameters'),
])
def test_options_are_checked_before_any_header(uneven, no_headers, options, message):
    with pytest.raises(ValueError, match=message):
        pt.subjects_from_manifest(uneven, **options)
    with pytest.raises(ValueError, match=message):
        validate(uneven, **options)


@pytest.mark.parametrize('options, message', [
    ({'patch_size': (4, 4)}, 'patch_size'),
    ({'patch_size': 0}, 'patch_size'),
    ({'patch_size': 4, 'sampler': 'labels'}, 'sampler'),
    ({'patch_size': 4, 'sampler': 'label', 'label_name': 'labelmap_0'}, 'label_name'),
    ({'patch_size': 4, 'missing': 'keep'}, 'missing'),
])
def test_queue_options_are_checked_before_any_header(uneven, no_headers, options, message):
    with pytest.raises(ValueError, match=message):
        pt.queue_from_manifest(uneven, samples_per_volume=1, max_length=2, **{'missing': 'empty', **options})


def test_plan_options_are_frozen_and_spell_the_fix():
    options = CheckOptions(orientation='ras')
    assert options.orientation == 'RAS' and options.fix('empty') == 'missing="empty"'
    assert CheckOptions(spelling='cli').fix('empty') == '--missing empty'
    with pytest.raises(AttributeError):
        options.missing = 'empty'


def test_patch_larger_than_a_subject_on_the_transform_path_names_it(uneven):
    uniform = {'full': uneven['full'], 'bare': {**uneven['bare'], 'images': [uneven['bare']['images'][0]] * 2}}
    with pytest.raises(pt.ManifestError) as info:
        pt.queue_from_manifest(uniform, patch_size=(7, 4, 4), samples_per_volume=1, max_length=2,
                               missing='empty', transform=tio.RandomFlip())
    message = str(info.value)
    assert 'subject "bare": patch_size: grid shape (D, H, W) (6, 11, 12) is smaller than patch_size (7, 4, 4)' in message
    assert '"full"' not in message and 'np.' not in message
    # A transform that resizes may make the patch fit: no check, and patches come out whole.
    resize = tio.Compose([tio.RandomFlip(), tio.CropOrPad((8, 8, 8))])
    queue = pt.queue_from_manifest(uniform, patch_size=(7, 4, 4), samples_per_volume=1, max_length=2,
                                   missing='empty', transform=resize)
    batch = next(iter(tio.SubjectsLoader(queue, batch_size=2)))
    assert batch['images'][tio.DATA].shape == (2, 2, 7, 4, 4)


def test_may_resize():
    assert may_resize(None) is False and may_resize(tio.RandomAffine()) is False
    assert may_resize(tio.OneOf({tio.RandomFlip(): 0.5, tio.Resize(8): 0.5})) is True
    assert may_resize(pt.transforms.RandomRotation90()) is True
    assert may_resize(lambda subject: subject) is None  # unknown: not checked
    assert may_resize(tio.Compose([tio.RandomFlip(), tio.Lambda(lambda x: x)])) is None


def test_inference_loader_names_the_subject(uneven):
    subject = pt.subjects_from_manifest(uneven)[1]
    with pytest.raises(ValueError) as info:
        pt.inference_loader(subject, (8, 8, 8))
    assert str(info.value) == (
        'subject "bare": inference_loader: grid shape (D, H, W) (6, 11, 12) is smaller than'
        ' patch_size (8, 8, 8); use a smaller patch'
    )
    loader, _ = pt.inference_loader(subject, (8, 8, 8), patch_overlap=2, padding_mode='constant')
    assert next(iter(loader))['images'][tio.DATA].shape[2:] == (8, 8, 8)


def test_pyable_dataset_takes_the_same_argument_names(uneven):
    dataset = pt.PyableDataset(uneven, reference='largest')
    assert dataset[0]['meta']['reference_used'].endswith('a.nii.gz')
    with pytest.warns(DeprecationWarning, match='reference_selector'):
        old = pt.PyableDataset(manifest=uneven, reference_selector='largest')
    assert old.ids == dataset.ids
    with pytest.raises(TypeError, match='reference='):
        pt.PyableDataset(uneven, reference='largest', reference_selector='first')


def test_heterogeneous_items_survive_default_collate(uneven):
    """The seed's basic example: DataLoader(PyableDataset(...), batch_size=1), PyTorch's own collate."""
    uneven['full']['images'][1] = {'path': uneven['full']['images'][1], 'name': 'T2'}  # one named, one not
    dataset = pt.PyableDataset(uneven)
    assert dataset[0]['meta']['names']['images'] == ['image_0', 'T2']  # issue 20: not ''
    items = list(DataLoader(dataset, batch_size=1))
    assert items[0]['images'].shape == (1, 2, 8, 9, 10) and len(items[0]['rois']) == 1
    assert items[1]['images'].shape == (1, 1, 6, 11, 12) and items[1]['rois'] == []
    with pytest.raises(pt.ManifestError, match='channel'):
        pt.PyableDataset(uneven, missing='error')  # pt.collate pads shapes, not channels: checked up front


def test_empty_filler_means_no_mask_for_intensity_normalization(uneven):
    uneven['bare']['images'] = [uneven['bare']['images'][0]] * 2
    subjects = pt.subjects_from_manifest(uneven, missing='empty')
    bare = subjects[1]
    bare.load()
    assert not bare['roi_0'].data.any()
    masked = pt.transforms.IntensityNormalization(mask='roi_0')(bare)
    whole = pt.transforms.IntensityNormalization()(bare)
    torch.testing.assert_close(masked['images'].data, whole['images'].data)
    data = masked['images'].data[0].double()
    assert abs(float(data.mean())) < 1e-4 and np.isclose(float(data.std()), 1.0, atol=1e-3)


def test_subjects_from_manifest_reports_every_problem_at_once(uneven, tmp_path):
    """A missing file, a misspelt field and an unreadable header of three subjects: one error lists all."""
    (tmp_path / 'garbage.nii.gz').write_bytes(b'not an image')
    manifest = {
        **uneven,
        'gone': {'images': [str(tmp_path / 'gone.nii.gz')]},
        'typo': {'images': uneven['bare']['images'], 'roi_path': uneven['full']['rois']},
        'garbage': {'images': [str(tmp_path / 'garbage.nii.gz')]},
    }
    with pytest.raises(pt.ManifestError) as info:
        pt.subjects_from_manifest(manifest)
    problems = info.value.problems
    assert len(problems) == 3
    assert any('"gone"' in p and 'gone.nii.gz: file not found' in p for p in problems)
    assert any('"typo"' in p and 'did you mean "rois"' in p for p in problems)
    assert any('"garbage"' in p and 'garbage.nii.gz' in p and 'unreadable image header' in p for p in problems)


def test_a_loader_over_subjects_that_differ_names_the_key_and_the_fix(uneven):
    uneven['bare']['images'] = [uneven['bare']['images'][0]] * 2
    dataset = pt.dataset_from_manifest(uneven, transform=tio.CropOrPad((6, 8, 8)))
    with pytest.raises(KeyError) as info:
        next(iter(tio.SubjectsLoader(dataset, batch_size=2)))
    message = str(info.value)
    assert 'subject "bare" has no key "roi_0"' in message and 'missing="empty"' in message
    batch = next(iter(tio.SubjectsLoader(pt.dataset_from_manifest(uneven, transform=tio.CropOrPad((6, 8, 8)),
                                                                  missing='empty'), batch_size=2)))
    assert batch['roi_0'][tio.DATA].shape == (2, 1, 6, 8, 8)


def test_each_listed_file_is_looked_up_once(uneven, monkeypatch, tmp_path):
    """A missing file leaves its subject out; the others' files are not looked up again."""
    from collections import Counter

    from pyable_tio.checking.headers import check_source
    from pyable_tio.io import dicom

    lookups, real = Counter(), dicom.path_problem

    def counted(path):
        lookups[str(path)] += 1
        return real(path)

    monkeypatch.setattr('pyable_tio.manifest.dicom.path_problem', counted)
    manifest = {**uneven, 'gone': {'images': [str(tmp_path / 'gone.nii.gz')]}}
    planned = check_source(manifest, CheckOptions())
    assert [p.record.id for p in planned.plans] == ['full', 'bare']
    assert len(planned.problems) == 1 and 'gone.nii.gz' in planned.problems[0]
    assert max(lookups.values()) == 1 and len(lookups) == 5
