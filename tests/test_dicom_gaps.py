"""A DICOM series with a missing slice is refused, naming the folder and the gap (issue 20, item 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

import pyable_tio as pt
from pyable_tio.checking.validate import validate
from pyable_tio.cli import main as cli
from pyable_tio.errors import ManifestError
from pyable_tio.io import dicom
from test_dicom import write_series

UID = '1.2.826.0.1.3680043.2.1125.9.1'


@pytest.fixture(scope='module')
def series(tmp_path_factory):
    """``complete/``: 9 slices 1.5 mm apart; ``gap/``: the same without the 5th slice."""
    root = tmp_path_factory.mktemp('gaps')
    array = np.random.RandomState(0).randint(0, 1000, (9, 6, 7)).astype(np.int16)
    volume = sitk.GetImageFromArray(array)
    volume.SetSpacing((0.8, 0.9, 1.5))
    volume.SetOrigin((10.0, -20.0, 30.0))
    for name in ('complete', 'gap'):
        write_series(volume, root / name, UID, 'T1')
    files = dicom.series_files(root / 'gap')
    middle = files[4]
    (root / 'gap' / middle.rsplit('/', 1)[1]).unlink()
    return root


def test_complete_series_still_reads(series):
    image = dicom.read_series(series / 'complete')
    assert image.GetSize() == (7, 6, 9) and image.GetSpacing()[2] == pytest.approx(1.5)


def test_missing_slice_is_refused_naming_folder_and_gap(series, capsys):
    folder = series / 'gap'
    with pytest.raises(dicom.SeriesError) as error:
        dicom.read_series(folder)
    message = str(error.value)
    assert message.startswith(f'DICOM series {folder}: slices are not evenly spaced: a gap of 3 mm between slice 4')
    assert 'the others are 1.5 mm apart (1 missing slice?)' in message
    with pytest.raises(dicom.SeriesError, match='not evenly spaced'):
        dicom.read_series_header(folder)
    manifest = series / 'manifest.json'
    manifest.write_text(json.dumps({'sub-01': {'images': [str(folder)]}}))
    problems = validate(manifest).problems
    assert len(problems) == 1
    assert problems[0].startswith(f'subject "sub-01": field "images": file {folder}: DICOM series {folder}: slices')
    assert 'a gap of 3 mm' in problems[0]
    with pytest.raises(ManifestError, match='a gap of 3 mm'):
        pt.subjects_from_manifest(manifest)
    assert cli.main(['validate', str(manifest)]) == 1
    assert 'a gap of 3 mm' in capsys.readouterr().err


def test_data_check_reports_the_gap_whole(series):
    from pyable_tio.io.integrity import check_file

    problems = check_file(series / 'gap').problems
    assert len(problems) == 1 and problems[0].startswith(f'DICOM series {series / "gap"}: slices are not evenly')
    assert check_file(series / 'complete').problems == []


def test_reading_checks_the_positions_read_with_the_voxels(series, monkeypatch):
    # Planning reads each slice's header once (remembered, with the folder's description); a
    # read takes the positions from the series reader's own pass over the files, never opening
    # a slice header a second time (on every load).
    dicom.read_series_header(series / 'complete')  # planning
    with pytest.raises(dicom.SeriesError):
        dicom.read_series_header(series / 'gap')
    opened = []
    header = dicom._file_header
    monkeypatch.setattr(dicom, '_file_header', lambda path: opened.append(path) or header(path))
    image = dicom.read_series(series / 'complete')
    assert image.GetSize() == (7, 6, 9)
    assert opened == []
    with pytest.raises(dicom.SeriesError, match='a gap of 3 mm'):
        dicom.read_series(series / 'gap')
    assert opened == []
