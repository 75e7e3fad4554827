"""First contact, round three (issue 20): bad input as one clear line, skipping broken subjects,
one set of field names, small wording fixes."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import pyable_tio as pt
from pyable_tio.cli import main as cli
from pyable_tio.io import nifti
from pyable_tio.errors import LoadError, SkippedSubjectsWarning

AFFINE = np.diag([1.0, 1.2, 2.0, 1.0])


def write_nifti(path: Path, shape=(12, 10, 8), dtype=np.float32) -> Path:
    nib.save(nib.Nifti1Image(np.arange(np.prod(shape), dtype=dtype).reshape(shape), AFFINE), str(path))
    return path


def write_manifest(tmp_path: Path, subjects: dict) -> Path:
    path = tmp_path / 'manifest.json'
    path.write_text(json.dumps(subjects))
    return path


def validate(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(['validate', *args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------- item 6: gzip bomb


def write_gzip_bomb(path: Path) -> Path:
    """A ~60-byte .nii.gz whose header declares 2^32 voxel bytes (uint8, 1024 x 1024 x 4096).

    Its gzip trailer (ISIZE, the length modulo 2^32) equals the header's expected length
    modulo 2^32, so the cheap trailer check alone lets it through.
    """
    header = bytearray(348)
    struct.pack_into('<i', header, 0, 348)
    struct.pack_into('<8h', header, 40, 3, 1024, 1024, 4096, 1, 1, 1, 1)
    struct.pack_into('<2h', header, 70, 2, 8)  # uint8, 8 bits
    struct.pack_into('<8f', header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into('<3f', header, 108, 352.0, 1.0, 0.0)
    struct.pack_into('<2h', header, 252, 1, 1)  # qform/sform codes
    struct.pack_into('<12f', header, 280, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)  # sform rows
    header[344:348] = b'n+1\x00'
    path.write_bytes(gzip.compress(bytes(header) + b'\x00' * 4))
    return path


def test_gzip_bomb_is_refused_before_allocating(tmp_path, capsys):
    bomb = write_gzip_bomb(tmp_path / 'bomb.nii.gz')
    assert bomb.stat().st_size < 120
    header = nifti.read_nifti_header(bomb)
    assert header.expected_bytes == 2**32 + 352
    # The premise: the trailer agrees modulo 2^32.
    assert struct.unpack('<I', bomb.read_bytes()[-4:])[0] == header.expected_bytes % 2**32
    with pytest.raises(nifti.TruncatedFileError, match='impossible size.*4294967648'):
        nifti.check_length(bomb)
    manifest = write_manifest(tmp_path, {'sub-bomb': {'images': [str(bomb)]}})  # a label map: its FOV is refused first
    subject = pt.subjects_from_manifest(manifest)[0]  # headers alone are plausible
    with pytest.raises(LoadError, match=r'subject "sub-bomb": file .*bomb\.nii\.gz: impossible size'):
        subject.load()
    code, _, err = validate(capsys, str(manifest))
    assert code == cli.EXIT_PROBLEMS
    assert 'subject "sub-bomb"' in err and str(bomb) in err and 'gzip bomb' in err


# ------------------------------------------------------------- item 7: over-long path


@pytest.fixture
def long_path_manifest(tmp_path):
    good = write_nifti(tmp_path / 't1.nii.gz')
    long_name = tmp_path / ('x' * 300 + '.nii.gz')  # a name over NAME_MAX (255)
    long_folder = tmp_path / ('y' * 5000) / 'seg.nii.gz'  # a path over PATH_MAX (4096)
    return write_manifest(tmp_path, {
        'sub-ok': {'images': [str(good)]},
        'sub-name': {'images': [str(long_name)]},
        'sub-folder': {'images': [str(good)], 'labelmaps': [str(long_folder)]},
    })


def test_over_long_path_is_a_problem_of_its_subject_and_field(long_path_manifest, tmp_path, capsys):
    with pytest.raises(pt.ManifestError) as caught:
        pt.subjects_from_manifest(long_path_manifest)
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith('subject "sub-name": field "images": file ')
    assert 'file name of 307 characters, longer than this file system allows' in problems[0]
    assert problems[1].startswith('subject "sub-folder": field "labelmaps": file ')
    assert 'longer than this file system allows' in problems[1]
    assert [s['id'] for s in caught.value.subjects] == ['sub-ok']
    # validate checks the rest and reports both, with subject and field.
    code, out, err = validate(capsys, str(long_path_manifest))
    assert code == cli.EXIT_PROBLEMS and 'Errno' not in err
    assert '1 valid of 3 listed' in out
    assert 'subject "sub-name": field "images"' in err and 'subject "sub-folder": field "labelmaps"' in err
    # cache fills the good subject and lists the others.
    code = cli.main(['cache', str(long_path_manifest), '--cache-dir', str(tmp_path / 'cache'), '--workers', '0'])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_PROBLEMS and 'Errno' not in err
    assert '1 volume(s)' in out and 'subject "sub-name": field "images"' in err


# ------------------------------------------------------- item 8: skipping broken subjects


@pytest.fixture
def one_broken_manifest(tmp_path):
    subjects = {f'sub-{i:02d}': {'images': [str(write_nifti(tmp_path / f't1_{i}.nii.gz'))]} for i in range(4)}
    subjects['sub-02']['labelmaps'] = [str(tmp_path / 'gone.nii.gz')]
    return write_manifest(tmp_path, subjects)


def test_on_error_skip_builds_the_good_subjects_and_lists_the_rest(one_broken_manifest, tmp_path, capsys):
    with pytest.raises(pt.ManifestError, match='sub-02'):  # the default stays strict
        pt.subjects_from_manifest(one_broken_manifest)
    with pytest.warns(SkippedSubjectsWarning, match=r'1 of 4 subjects skipped \(sub-02\)') as caught:
        subjects = pt.subjects_from_manifest(one_broken_manifest, on_error='skip')
    assert [s['id'] for s in subjects] == ['sub-00', 'sub-01', 'sub-03']
    warning = caught[0].message
    assert warning.skipped == ['sub-02']
    assert 'field "labelmaps": file ' in warning.problems[0] and 'gone.nii.gz: file not found' in warning.problems[0]
    subjects[0].load()  # the good ones are real subjects
    with pytest.warns(SkippedSubjectsWarning):
        dataset = pt.dataset_from_manifest(one_broken_manifest, on_error='skip')
    assert len(dataset) == 3
    with pytest.warns(SkippedSubjectsWarning):
        queue = pt.queue_from_manifest(one_broken_manifest, patch_size=4, samples_per_volume=1,
                                       max_length=3, on_error='skip')
    assert len(queue) == 3
    with pytest.raises(ValueError, match='on_error'):
        pt.subjects_from_manifest(one_broken_manifest, on_error='ignore')
    # The command line: cache the good ones, list the rest as skipped, exit 0.
    code = cli.main(['cache', str(one_broken_manifest), '--cache-dir', str(tmp_path / 'c'), '--workers', '0',
                     '--no-progress', '--on-error', 'skip'])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_OK and '3 volume(s)' in out
    assert 'skipped (--on-error skip)' in err and 'subject "sub-02": field "labelmaps"' in err


def test_on_error_skip_still_raises_what_skipping_cannot_fix(tmp_path):
    image = str(write_nifti(tmp_path / 't1.nii.gz'))
    only_bad = write_manifest(tmp_path, {'a': {'images': [str(tmp_path / 'gone.nii.gz')]}})
    with pytest.raises(pt.ManifestError, match='file not found'):
        pt.subjects_from_manifest(only_bad, on_error='skip')  # nothing left to build
    # Subjects that disagree (missing="error") are a problem of the manifest, not of one subject.
    disagree = {'a': {'images': [image], 'labelmaps': [image]}, 'b': {'images': [image]}}
    with pytest.raises(pt.ManifestError, match='different numbers of labelmaps'):
        pt.subjects_from_manifest(disagree, missing='error', on_error='skip')


# --------------------------------------------------- item 9: one set of field names


def test_every_format_accepts_the_same_field_names(tmp_path):
    t1, t2 = write_nifti(tmp_path / 't1.nii.gz'), write_nifti(tmp_path / 't2.nii.gz')
    seg = write_nifti(tmp_path / 'seg.nii.gz', dtype=np.uint8)
    expected = ([t1, t2], [seg], [seg])
    for images, rois, labelmaps in (('images', 'rois', 'labelmaps'), ('image_paths', 'roi_paths', 'labelmap_paths')):
        table = tmp_path / f'{images}.csv'
        table.write_text(f'id,{images},{rois},{labelmaps}\ns,"[""{t1}"", ""{t2}""]",{seg},{seg}\n')
        mapping = {'s': {images: [str(t1), str(t2)], rois: [str(seg)], labelmaps: [str(seg)]}}
        for source in (table, mapping):
            record = pt.read_manifest(source)['s']
            found = tuple([e.path for e in entries] for entries in (record.images, record.rois, record.labelmaps))
            assert found == expected, (images, source)
            assert not record.extra
    both = {'s': {'images': [str(t1)], 'image_paths': [str(t2)]}}
    with pytest.raises(pt.ManifestError, match=r'subject "s": field "images": both "images" and "image_paths"'):
        pt.read_manifest(both)


def test_a_wrong_column_is_reported_once(tmp_path):
    image = write_nifti(tmp_path / 't1.nii.gz')
    table = tmp_path / 'typo.csv'
    rows = ''.join(f'sub-{i},{image},{image}\n' for i in range(6))
    table.write_text('id,images,labelmap_path\n' + rows)
    with pytest.raises(pt.ManifestError) as caught:
        pt.read_manifest(table)
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(f'file {table}: column "labelmap_path": unknown field, did you mean')
    assert '6 rows: subjects "sub-0", "sub-1"' in problems[0]


# ------------------------------------------------------ item 12: the CLI starts at once

HEAVY = ('torch', 'torchio', 'SimpleITK', 'numpy', 'pandas', 'nibabel')


@pytest.mark.parametrize('argv, code', [
    (['--help'], 0), (['--version'], 0), (['validate', '--help'], 0), (['cache', 'm.json', '--workers', 'x'], 2),
    (['cache', 'm.json'], 2),  # --cache-dir missing
])
def test_cli_parsing_imports_no_heavy_package(argv, code):
    import subprocess
    import sys

    script = (
        'import sys; from pyable_tio_cli import main\n'
        f'code = main({argv!r})\n'
        f'print([name for name in {HEAVY!r} if name in sys.modules]); sys.exit(code)'
    )
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert done.stdout.strip().splitlines()[-1] == '[]', done.stdout


def test_lazy_namespace_is_the_export_list():
    import subprocess
    import sys

    script = (
        'import sys, pyable_tio as pt\n'
        'assert "torch" not in sys.modules\n'
        'assert set(pt.__all__) <= set(dir(pt))\n'
        'from pyable_tio import subjects_from_manifest, transforms\n'
        'assert pt.subjects_from_manifest is subjects_from_manifest and pt.transforms is transforms\n'
        'assert all(getattr(pt, name) is not None for name in pt.__all__)\n'
        'print("ok")'
    )
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == 'ok', done.stderr[-2000:]
    with pytest.raises(AttributeError, match='no attribute'):
        pt.not_a_name  # noqa: B018


def test_preprocess_step_names_for_the_help_match_the_steps():
    from pyable_tio.constants import PREPROCESS_STEP_NAMES
    from pyable_tio.preprocess import STEPS

    assert PREPROCESS_STEP_NAMES == tuple(sorted(STEPS))


# --------------------------------------------------------------- item 15: small things


def test_cache_dir_options_have_help(capsys):
    for command in ('cache', 'info'):
        assert cli.main([command, '--help']) == 0
        out = capsys.readouterr().out
        help_line = out[out.index('--cache-dir DIR  ') if '--cache-dir DIR  ' in out else out.rindex('--cache-dir DIR'):]
        assert 'cache folder' in help_line.split('--', 2)[1], out


def test_a_file_listed_twice_is_one_volume_not_a_hit(tmp_path, capsys):
    image, seg = write_nifti(tmp_path / 't1.nii.gz'), write_nifti(tmp_path / 'seg.nii.gz', dtype=np.uint8)
    manifest = write_manifest(tmp_path, {s: {'images': [str(image)], 'labelmaps': [str(seg)]} for s in 'ab'})
    assert cli.main(['cache', str(manifest), '--cache-dir', str(tmp_path / 'c'), '--workers', '0', '--no-progress']) == 0
    out = capsys.readouterr().out
    assert out.startswith('2 volume(s): 0 hit(s), 2 miss(es)') and '2 entries' in out


def test_validate_summary_says_oblique_and_counts_in_words(tmp_path, capsys):
    import SimpleITK as sitk

    straight = write_nifti(tmp_path / 't1.nii.gz')
    image = sitk.ReadImage(str(straight))
    angle = np.radians(20)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / 't2.nii.gz'))
    manifest = write_manifest(tmp_path, {'s': {'images': [str(straight), str(tmp_path / 't2.nii.gz')]}})
    code, out, _ = validate(capsys, str(manifest))
    assert code == 0
    orientations = next(line for line in out.splitlines() if 'orientations' in line)
    assert '(oblique, 20 deg) (1 file)' in orientations and '(1 files)' not in out


def test_gzip_failure_says_where_it_failed(tmp_path):
    path = write_nifti(tmp_path / 't1.nii.gz', shape=(40, 40, 40))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(nifti.TruncatedFileError) as caught:
        nifti.check_stream(path)
    message = str(caught.value)
    assert 'fails after 0 bytes' not in message
    held = int(message.split('fails after ')[1].split(' bytes')[0])
    assert 0 < held < 352 + 40 * 40 * 40 * 4


def test_an_unnamed_image_among_named_ones_is_named_by_its_place(tmp_path):
    t1, t2 = write_nifti(tmp_path / 't1.nii.gz'), write_nifti(tmp_path / 't2.nii.gz')
    subject = pt.subjects_from_manifest({'s': {'images': [str(t1), {'path': str(t2), 'name': 'T2'}]}})[0]
    assert subject['meta']['names'] == {'images': ['image_0', 'T2'], 'rois': [], 'labelmaps': []}


# ----------------------------------------------------- item 13: progress where work is long


def test_validate_shows_progress_only_when_asked_or_on_a_terminal(tmp_path, capsys):
    image = write_nifti(tmp_path / 't1.nii.gz')
    manifest = write_manifest(tmp_path, {'s': {'images': [str(image)]}})
    code, _, err = validate(capsys, str(manifest))  # stderr is not a terminal here: no bar
    assert code == 0 and err == ''
    code, _, err = validate(capsys, str(manifest), '--progress')
    assert code == 0 and 'reading files' in err and '1/1' in err
    report = pt.checking.validate.validate(manifest, progress=True)
    assert report.subjects == 1 and 'reading files' in capsys.readouterr().err


def test_cache_workers_default_from_the_work():
    assert cli.cli_args.cache_workers(None, 12) == 0  # a small manifest: no worker start-up to pay
    assert cli.cli_args.cache_workers(None, 500) >= 1
    assert cli.cli_args.cache_workers(3, 12) == 3  # --workers wins
    args = cli._parser().parse_args(['cache', 'm.json', '--cache-dir', 'c'])
    assert args.workers is None
