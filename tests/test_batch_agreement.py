"""Subjects that TorchIO's collate cannot batch are caught before training (issue 20, item 5)."""

from __future__ import annotations

import json

import pytest
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.checking.validate import validate
from pyable_tio.cli import main as cli
from pyable_tio.errors import ManifestError


@pytest.fixture()
def manifest(tmp_path):
    path = synthetic.write_dataset(tmp_path, num_subjects=3, size=(20, 18, 12), second_image=False)
    return path, json.loads(path.read_text())


def test_one_named_image_batches_with_unnamed_ones(manifest):
    path, content = manifest
    content['sub-00']['images'] = [{'path': content['sub-00']['images'][0], 'name': 't1'}]
    path.write_text(json.dumps(content))
    assert validate(path, missing='error').problems == []
    dataset = pt.dataset_from_manifest(path, missing='error')
    batch = next(iter(tio.SubjectsLoader(dataset, batch_size=3)))  # was KeyError: 'images'
    assert batch['meta']['names']['images'] == [['t1'], [''], ['']]
    assert batch['meta']['names']['rois'] == [[''], [''], ['']]


def test_an_extra_field_missing_in_one_subject_is_reported_naming_it(manifest, capsys):
    path, content = manifest
    del content['sub-01']['age']
    content['sub-02']['label'] = 'patient'
    path.write_text(json.dumps(content))
    expected = (
        'subjects differ in what a batch collates, compared with "sub-00": "sub-01" lacks field "age";'
        ' "sub-02" has text or a list as field "label", not a number.'
    )
    problems = validate(path, missing='error').problems
    assert len(problems) == 1 and problems[0].startswith(expected)
    assert cli.main(['validate', str(path), '--missing', 'error']) == 1
    assert expected in capsys.readouterr().err
    with pytest.raises(ManifestError, match='"sub-01" lacks field "age"'):
        pt.subjects_from_manifest(path, missing='error')
    with pytest.raises(ManifestError, match='"sub-01" lacks field "age"'):
        pt.queue_from_manifest(path, patch_size=4, samples_per_volume=1, max_length=2)
    # Batch size 1 needs no agreement: a note, not a problem.
    report = validate(path)
    assert report.problems == [] and any('refused by a patch queue' in note for note in report.notes)
    assert len(pt.subjects_from_manifest(path)) == 3


def test_preprocessed_subjects_collate(manifest, tmp_path):
    path, _ = manifest
    dataset = pt.dataset_from_manifest(path, missing='error', preprocess='n4', cache_dir=tmp_path / 'cache')
    batch = next(iter(tio.SubjectsLoader(dataset, batch_size=2)))  # was KeyError: the first image's path
    assert batch['meta']['preprocessing'] == [[['n4']], [['n4']]]
