"""Fixtures shared by the dataset, queue and patch tests."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

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


# ---------------------------------------------------------------- real data (MNI)

MNI_FILES = {
    't1': 'mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz',
    'gm': 'mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz',
    'wm': 'mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz',
}
NILEARN = 'nilearn==0.14.1'


@pytest.fixture(scope='session')
def mni(tmp_path_factory):
    """The MNI152 2009a T1 template and its GM/WM maps, from the nilearn wheel (downloaded once)."""
    folder = Path(os.environ.get('PYABLE_TIO_TEST_DATA', Path.home() / '.cache' / 'pyable-tio' / 'test-data'))
    folder = folder / 'mni152_2009a'
    paths = {name: folder / file for name, file in MNI_FILES.items()}
    if not all(path.is_file() for path in paths.values()):
        wheels = tmp_path_factory.mktemp('wheel')
        command = [sys.executable, '-m', 'pip', 'download', '--no-deps', '-q', NILEARN, '-d', str(wheels)]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as error:
            pytest.skip(f'cannot download {NILEARN} for the MNI template: {error}')
        wheel = next(wheels.glob('nilearn-*.whl'))
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name, file in MNI_FILES.items():
                temporary = paths[name].with_suffix('.part')
                temporary.write_bytes(archive.read(f'nilearn/datasets/data/{file}'))
                os.replace(temporary, paths[name])
    return paths
