"""One atomic writer serves the cache, alignment and native saving: nothing half-written."""

from __future__ import annotations

import os

import pytest
import SimpleITK as sitk

from pyable_tio.io.atomic import HOST, atomic_path, atomic_write, temporary_path


def test_atomic_write_renames_a_complete_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / 'sub' / 'x.json'
    assert atomic_write(target, lambda stream: stream.write(b'{"a": 1}')) == 8
    assert target.read_bytes() == b'{"a": 1}'
    assert sorted(p.name for p in target.parent.iterdir()) == ['x.json']


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / 'x.json'
    target.write_bytes(b'old')

    def crash(stream):
        stream.write(b'half')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['x.json']


def test_temporaries_keep_the_format_suffix_and_name_their_writer(tmp_path):
    target = tmp_path / 'seg.nii.gz'
    name = temporary_path(target, keep_suffix=True).name
    assert name.startswith(f'.seg.nii.gz.{HOST}.{os.getpid()}.') and name.endswith('.tmp.nii.gz')  # host and pid
    with atomic_path(target, keep_suffix=True) as partial:
        sitk.WriteImage(sitk.Image(4, 3, 2, sitk.sitkUInt8), str(partial))  # format from the suffix
        assert not target.exists()
    assert sitk.ReadImage(str(target)).GetSize() == (4, 3, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['seg.nii.gz']
