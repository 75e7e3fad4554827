"""Bad data: truncated files, non-finite voxels and label maps that are not labels (issue 16, items 5, 11, 12)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import pyable_tio as pt
from pyable_tio.cli import main as cli
from pyable_tio.io import nifti
from pyable_tio.cache import VolumeCache
from pyable_tio.errors import LoadError
from pyable_tio.checking.validate import validate

SHAPE_XYZ = (12, 10, 8)
AFFINE = np.diag([1.0, 1.2, 2.0, 1.0])


def write_nifti(path: Path, array_xyz: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """A NIfTI written by nibabel (SimpleITK's writer is not the thing under test)."""
    nib.save(nib.Nifti1Image(array_xyz, affine), str(path))
    return path


def ramp(dtype=np.float32) -> np.ndarray:
    return np.arange(np.prod(SHAPE_XYZ), dtype=dtype).reshape(SHAPE_XYZ) / 7


def cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def manifest_of(tmp_path: Path, **fields) -> Path:
    path = tmp_path / 'manifest.json'
    path.write_text(json.dumps({'sub-bad': {k: [str(p) for p in v] for k, v in fields.items()}}))
    return path


def run_validate(capsys, manifest: Path, *options: str) -> tuple[int, str, str]:
    code = cli.main(['validate', str(manifest), *options])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------- item 11: truncation


@pytest.mark.parametrize('suffix', ['.nii', '.nii.gz'])
def test_truncated_nifti_is_refused_at_load_and_nothing_is_cached(tmp_path, capsys, suffix):
    path = cut_in_half(write_nifti(tmp_path / f't1{suffix}', ramp()))
    # The premise: SimpleITK reads it without complaint, zero-filled.
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == 0).sum() > 1
    with pytest.raises(nifti.TruncatedFileError, match='truncated'):
        nifti.check_length(path)
    manifest = manifest_of(tmp_path, images=[path])
    cache = VolumeCache(tmp_path / 'cache')
    subject = pt.subjects_from_manifest(manifest, cache_dir=cache)[0]  # headers are intact
    with pytest.raises(LoadError, match=r'subject "sub-bad": file .*t1\.nii.*: truncated'):
        subject.load()
    assert cache.stats().entries == 0
    code, _, err = run_validate(capsys, manifest)
    assert code == cli.EXIT_PROBLEMS
    assert 'subject "sub-bad"' in err and str(path) in err and 'truncated' in err


@pytest.mark.parametrize('suffix', ['.nrrd', '.mha'])
def test_truncated_raw_nrrd_and_metaimage_already_fail_in_simpleitk(tmp_path, suffix):
    """No size check needed for them: their readers count the bytes they get."""
    path = tmp_path / f't1{suffix}'
    sitk.WriteImage(sitk.GetImageFromArray(ramp().T.copy()), str(path))
    cut_in_half(path)
    subject = pt.subjects_from_manifest(manifest_of(tmp_path, images=[path]))[0]
    with pytest.raises(LoadError, match=r'subject "sub-bad": file .*t1\.(nrrd|mha): unreadable image'):
        subject.load()


def test_load_check_is_cheap_and_validate_reads_the_whole_stream(tmp_path, capsys):
    """A damaged middle with an intact trailer passes the load check; validate decompresses it all."""
    path = write_nifti(tmp_path / 't1.nii.gz', ramp())
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # stream damaged, trailer (CRC, ISIZE) intact
    path.write_bytes(bytes(data))
    nifti.check_length(path)  # only the trailer: fine
    with pytest.raises(nifti.TruncatedFileError, match='damaged'):
        nifti.check_stream(path)
    code, _, err = run_validate(capsys, manifest_of(tmp_path, images=[path]))
    assert code == cli.EXIT_PROBLEMS and 'subject "sub-bad"' in err and 't1.nii.gz' in err


def test_intact_files_pass_every_check(tmp_path):
    for suffix in ('.nii', '.nii.gz'):
        path = write_nifti(tmp_path / f'ok{suffix}', ramp())
        nifti.check_length(path)
        assert nifti.check_stream(path) >= nifti.read_nifti_header(path).expected_bytes


# ---------------------------------------------------------- item 12: non-finite voxels


@pytest.fixture
def nan_file(tmp_path) -> Path:
    array = ramp()
    array[3, 4, 5] = np.nan
    array[6, 2, 1] = np.inf
    array[1, 1, 6] = -np.inf
    return write_nifti(tmp_path / 'adc.nii.gz', array)


def zyx(index_xyz):
    return (0, *index_xyz[::-1])


def shifted_grid(path: Path) -> pt.geometry.grid.Grid:
    """The file's grid moved by half a voxel along x: every voxel is interpolated."""
    grid = pt.geometry.grid.Grid.from_image(pt.geometry.grid.read_header(path))
    return pt.geometry.grid.Grid(grid.size, grid.spacing, (grid.origin[0] + 0.5, *grid.origin[1:]), grid.direction)


def test_simpleitk_zeroes_non_finite_nifti_voxels(nan_file):
    """The premise of item 12: what SimpleITK alone gives, and why pyable-tio reads past it."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(nan_file)))
    assert array[5, 4, 3] == 0 and array[1, 2, 6] == 0 and np.isfinite(array).all()


def test_default_refuses_non_finite_voxels_naming_subject_and_file(tmp_path, nan_file):
    subject = pt.subjects_from_manifest(manifest_of(tmp_path, images=[nan_file]))[0]
    with pytest.raises(LoadError, match=r'subject "sub-bad": file .*adc\.nii\.gz: 3 non-finite voxels'
                                        r' \(1 NaN, 1 \+Inf, 1 -Inf\)'):
        subject.load()


def test_keep_gives_the_values_as_stored_on_grid_and_after_resampling(tmp_path, nan_file):
    manifest = manifest_of(tmp_path, images=[nan_file])
    data = pt.subjects_from_manifest(manifest, nonfinite='keep')[0]['images'].data.numpy()
    assert np.isnan(data[zyx((3, 4, 5))]) and data[zyx((6, 2, 1))] == np.inf and data[zyx((1, 1, 6))] == -np.inf
    assert int(np.isfinite(data).sum()) == data.size - 3
    # Onto a grid shifted by half a voxel: linear interpolation spreads NaN, and +-Inf stays
    # infinite (ITK's resampler alone would clamp it to +-3.4e38).
    grid = shifted_grid(nan_file)
    shifted = pt.subjects_from_manifest(manifest, nonfinite='keep', reference_space=grid)[0]['images'].data.numpy()
    assert np.isposinf(shifted).any() and np.isneginf(shifted).any() and np.isnan(shifted).any()
    assert np.abs(shifted[np.isfinite(shifted)]).max() < 1e30


def test_zero_replaces_before_interpolation_so_nothing_spreads(tmp_path, nan_file):
    manifest = manifest_of(tmp_path, images=[nan_file])
    grid = shifted_grid(nan_file)
    data = pt.subjects_from_manifest(manifest, nonfinite='zero', reference_space=grid)[0]['images'].data.numpy()
    assert np.isfinite(data).all()
    # Exactly what resampling the zero-filled volume gives: the replacement came first.
    clean = np.nan_to_num(nib.load(str(nan_file)).get_fdata().astype(np.float32), nan=0, posinf=0, neginf=0)
    clean_file = write_nifti(tmp_path / 'clean.nii.gz', clean)
    expected = pt.subjects_from_manifest(manifest_of(tmp_path, images=[clean_file]), reference_space=grid)[0]
    np.testing.assert_array_equal(data, expected['images'].data.numpy())


def test_nonfinite_policy_is_part_of_the_cache_key(tmp_path, nan_file):
    manifest = manifest_of(tmp_path, images=[nan_file])
    cache = VolumeCache(tmp_path / 'cache')
    kept = pt.subjects_from_manifest(manifest, nonfinite='keep', cache_dir=cache)[0]
    zeroed = pt.subjects_from_manifest(manifest, nonfinite='zero', cache_dir=cache)[0]
    kept.load()
    zeroed.load()
    assert cache.stats().entries == 2
    assert np.isnan(kept['images'].data.numpy()).any() and np.isfinite(zeroed['images'].data.numpy()).all()
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        pt.subjects_from_manifest(manifest, nonfinite='drop')


def test_validate_reports_non_finite_voxels_per_file(tmp_path, capsys, nan_file):
    manifest = manifest_of(tmp_path, images=[nan_file])
    code, _, err = run_validate(capsys, manifest)
    assert code == cli.EXIT_PROBLEMS
    assert 'subject "sub-bad"' in err and 'adc.nii.gz' in err and '1 NaN, 1 +Inf, 1 -Inf' in err
    code, out, _ = run_validate(capsys, manifest, '--nonfinite', 'keep')
    assert code == cli.EXIT_OK and 'note:' in out and '3 non-finite voxels' in out and 'kept as stored' in out
    report = validate(manifest, nonfinite='zero')
    assert report.problems == [] and 'replaced by 0' in report.notes[0]


# -------------------------------------------------------- item 5: labels that are not labels


def test_float_label_map_with_fractions_is_refused(tmp_path, capsys):
    image = write_nifti(tmp_path / 't1.nii.gz', ramp())
    probabilities = write_nifti(tmp_path / 'prob.nii.gz', ramp() / ramp().max())  # 960 distinct values
    manifest = manifest_of(tmp_path, images=[image], labelmaps=[probabilities], rois=[probabilities])
    subject = pt.subjects_from_manifest(manifest)[0]
    with pytest.raises(LoadError, match=r'subject "sub-bad": file .*prob\.nii\.gz: label map holds non-integer'
                                        r' values \(960 distinct values'):
        subject['labelmap_0'].load()
    with pytest.raises(LoadError, match='ROI holds non-integer values'):
        subject['roi_0'].load()
    code, _, err = run_validate(capsys, manifest)
    assert code == cli.EXIT_PROBLEMS
    assert 'subject "sub-bad": field "labelmaps": file' in err and 'prob.nii.gz' in err and 'non-integer' in err


def test_float_label_map_holding_integers_is_accepted(tmp_path, capsys):
    image = write_nifti(tmp_path / 't1.nii.gz', ramp())
    labels = write_nifti(tmp_path / 'seg.nii.gz', np.floor(ramp() % 3).astype(np.float32))
    manifest = manifest_of(tmp_path, images=[image], labelmaps=[labels])
    data = pt.subjects_from_manifest(manifest)[0]['labelmap_0'].data
    assert set(np.unique(data.numpy())) == {0.0, 1.0, 2.0}
    assert run_validate(capsys, manifest)[0] == cli.EXIT_OK


def test_headers_only_skips_the_data_checks(tmp_path, capsys):
    path = cut_in_half(write_nifti(tmp_path / 't1.nii', ramp()))
    assert run_validate(capsys, manifest_of(tmp_path, images=[path]), '--headers-only')[0] == cli.EXIT_OK


def test_gzip_helper_matches_python(tmp_path):
    """ISIZE is the uncompressed length mod 2**32, as the load check assumes."""
    path = write_nifti(tmp_path / 'x.nii.gz', ramp())
    with gzip.open(path, 'rb') as stream:
        length = len(stream.read())
    assert int.from_bytes(path.read_bytes()[-4:], 'little') == length == nifti.read_nifti_header(path).expected_bytes


def test_every_constructor_forwards_the_policy(tmp_path, nan_file):
    manifest = manifest_of(tmp_path, images=[nan_file])
    assert np.isfinite(pt.dataset_from_manifest(manifest, nonfinite='zero')[0]['images'].data.numpy()).all()
    assert np.isnan(pt.PyableDataset(manifest, nonfinite='keep')[0]['images'].numpy()).sum() == 1
    with pytest.raises(LoadError, match='non-finite'):
        pt.PyableDataset(manifest)[0]
