"""Fixtures shared by the dataset, queue and patch tests."""

from __future__ import annotations

import pytest
import torch

import pyable_tio as pt
from pyable_tio import synthetic


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    """Three subjects: oblique T2 resampled onto a 20 x 18 x 12 (x,y,z) T1, labels and a ROI."""
    folder = tmp_path_factory.mktemp('dataset')
    return synthetic.write_dataset(folder, num_subjects=3, size=(20, 18, 12), spacing=(1.0, 1.1, 1.8))


@pytest.fixture(scope='module')
def full_subjects(manifest):
    """The whole volumes, loaded once, by subject id."""
    subjects = pt.subjects_from_manifest(manifest)
    for subject in subjects:
        subject.load()
    return {subject['id']: subject for subject in subjects}


def crop(tensor: torch.Tensor, location) -> torch.Tensor:
    """The patch of a C x D x H x W tensor at a ``tio.LOCATION`` row (d0, h0, w0, d1, h1, w1)."""
    d0, h0, w0, d1, h1, w1 = (int(v) for v in location)
    return tensor[:, d0:d1, h0:h1, w0:w1]
