"""A seed-style callable may declare that it relabels; the interpolation guard stays (issue 20, item 10)."""

from __future__ import annotations

import pickle

import pytest
import torch

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio import transforms as T


@T.changes_labels
def merge_2_into_5(images, rois, labelmaps, meta):
    return images, rois, [torch.where(label == 2, 5, label) for label in labelmaps]


def relabel_undeclared(images, rois, labelmaps, meta):
    return images, rois, [torch.where(label == 2, 5, label) for label in labelmaps]


@T.changes_labels
def smooth_labels(images, rois, labelmaps, meta):
    return images, rois, [label.float() * 0.5 for label in labelmaps]


@T.changes_labels
def relabel_to_300(images, rois, labelmaps, meta):
    return images, rois, [torch.where(label == 2, 300, label.long()) for label in labelmaps]


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp('relabel'), num_subjects=1, size=(20, 18, 12),
                                   second_image=False)


def test_declared_relabelling_is_kept(manifest):
    subject = pt.dataset_from_manifest(manifest, transform=T.Compose([merge_2_into_5]))[0]
    label = subject['labelmap_0'].data
    assert set(label.unique().tolist()) == {0, 1, 5, 7} and label.dtype == torch.uint8
    item = pt.PyableDataset(manifest, transforms=[merge_2_into_5])[0]
    assert set(item['labelmaps'][0].unique().tolist()) == {0, 1, 5, 7}
    assert pickle.loads(pickle.dumps(T.CallableTransform(merge_2_into_5))).changes_labels  # workers
    # Declared by argument, for a function one cannot decorate.
    declared = pt.dataset_from_manifest(manifest, transform=T.CallableTransform(relabel_undeclared, changes_labels=True))
    assert set(declared[0]['labelmap_0'].data.unique().tolist()) == {0, 1, 5, 7}
    # New labels wider than the file's type: a wider integer type, never wrapped around.
    wide = pt.dataset_from_manifest(manifest, transform=T.Compose([relabel_to_300]))[0]['labelmap_0'].data
    assert set(wide.unique().tolist()) == {0, 1, 7, 300} and wide.dtype == torch.int16


def test_undeclared_new_values_and_non_integers_are_still_refused(manifest):
    with pytest.raises(ValueError) as error:
        pt.dataset_from_manifest(manifest, transform=T.Compose([relabel_undeclared]))[0]
    message = str(error.value)
    assert message.startswith('subject "sub-00": transform relabel_undeclared: "labelmap_0": new values [5]')
    assert 'labels must not be interpolated' in message and 'changes_labels' in message
    with pytest.raises(ValueError, match='sub-00.*labelmap_0.*non-integer values'):
        pt.dataset_from_manifest(manifest, transform=T.Compose([smooth_labels]))[0]
