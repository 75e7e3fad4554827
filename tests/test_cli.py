"""The pyable-tio command line: validate, cache and info; exit codes and messages."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.cli import fill as cache_fill
from pyable_tio.cli import main as cli
from pyable_tio.cli import args as cli_args
from pyable_tio.cache import VolumeCache
from pyable_tio.checking.validate import validate

SIZE = (20, 18, 12)  # x, y, z


@pytest.fixture(scope='module')
def manifest(tmp_path_factory) -> Path:
    """Three subjects: T1 (reference), oblique thick-slice T2, labels and a ROI."""
    return synthetic.write_dataset(tmp_path_factory.mktemp('data'), num_subjects=3, size=SIZE)


@pytest.fixture
def bad_manifest(manifest, tmp_path) -> Path:
    """A missing file, a garbage header, a 2-D ROI, a bad transform, unbatchable ROI counts."""
    folder = manifest.parent
    records = json.loads(manifest.read_text())
    records = {k: {**v, 'images': [str(folder / p) for p in v['images']],
                   'rois': [str(folder / p) for p in v['rois']],
                   'labelmaps': [str(folder / p) for p in v['labelmaps']]} for k, v in records.items()}
    (tmp_path / 'garbage.nii.gz').write_bytes(b'not an image')
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkUInt8), str(tmp_path / 'flat.nii.gz'))
    (tmp_path / 'bad.tfm').write_text('#Insight Transform File V1.0\nnonsense\n')
    records['good'] = dict(records['sub-02'])
    records['extra'] = {**records['sub-02'], 'rois': []}  # fine alone, but not batchable with 'good'
    records['tfm'] = {**records['sub-02'], 'transforms': [str(tmp_path / 'bad.tfm')]}
    records['sub-00']['images'][1] = str(tmp_path / 'missing.nii.gz')
    records['sub-01']['labelmaps'] = [str(tmp_path / 'garbage.nii.gz')]
    records['sub-02']['rois'] = [str(tmp_path / 'flat.nii.gz')]
    path = tmp_path / 'bad.json'
    path.write_text(json.dumps(records))
    return path


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore::DeprecationWarning'}
    return subprocess.run([sys.executable, '-m', 'pyable_tio', *args], capture_output=True, text=True, env=env,
                          timeout=600)


# ------------------------------------------------------------------- validate


def test_validate_good_manifest_prints_a_summary(manifest, capsys):
    assert cli.main(['validate', str(manifest)]) == 0
    out, err = capsys.readouterr()
    assert err == ''
    assert '3 valid of 3 listed' in out
    assert '2 (3 subj.)' in out  # two images per subject
    assert '1 x 1 x 1.5 (9 files)' in out and '1 x 1 x 3 (3 files)' in out  # T2 slices are thicker
    assert 'LPS (9 files), LPS (oblique, 15 deg) (3 files)' in out  # the T2s are rotated by 15 degrees
    assert f'{SIZE[0]} x {SIZE[1]} x {SIZE[2]} (3 subj.)' in out
    assert out.strip().endswith('OK: 3 subject(s), no problems')


def test_validate_reports_each_problem_on_one_line(bad_manifest, capsys):
    assert cli.main(['validate', str(bad_manifest), '--missing', 'error']) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines[-1] == '5 problems found'
    problems = lines[:-1]
    assert all(line.startswith(f'{bad_manifest}: ') for line in problems)
    expected = {
        'sub-00': ('missing.nii.gz', 'file not found'),
        'sub-01': ('garbage.nii.gz', 'unreadable image header'),
        'sub-02': ('flat.nii.gz', 'mismatched dimensions'),
        'tfm': ('bad.tfm', 'unreadable transform'),
    }
    for subject_id, (name, problem) in expected.items():
        assert any(f'subject "{subject_id}"' in l and name in l and problem in l for l in problems), subject_id
    rois = next(line for line in problems if 'different numbers of rois' in line)  # "extra" has no ROI
    assert '"extra"' in rois and '"good"' in rois and '--missing empty' in rois  # the fix, as typed here
    assert 'Traceback' not in out + err
    assert '2 valid of 6 listed' in out  # "good" and "extra" are fine on their own


def test_validate_from_python(manifest, bad_manifest):
    report = validate(manifest)
    assert (report.problems, report.subjects, report.listed) == ([], 3, 3)
    assert report.orientations == {'LPS': 9, 'LPS (oblique, 15 deg)': 3} and report.counts['images'] == {2: 3}
    bad = validate(bad_manifest, missing='empty')  # ROI counts may now differ
    assert bad.subjects == 2 and len(bad.problems) == 4
    kept = validate(bad_manifest)  # the default: each subject has its own ROIs; a note says a batch would not
    assert kept.subjects == 2 and len(kept.problems) == 4 and 'missing="empty"' in kept.notes[0]


def test_validate_checks_transforms_as_subjects_from_manifest_does(manifest, tmp_path):
    """A 2-D transform cannot map a 3-D grid: validate says so, as subjects_from_manifest would."""
    folder = manifest.parent
    first = json.loads(manifest.read_text())['sub-00']
    flat = tmp_path / 'flat.tfm'
    sitk.WriteTransform(sitk.Euler2DTransform(), str(flat))
    records = {'s': {'images': [str(folder / p) for p in first['images']], 'transforms': [str(flat)]}}
    path = tmp_path / 'flat_transform.json'
    path.write_text(json.dumps(records))
    report = validate(path)
    assert report.subjects == 0 and len(report.problems) == 1
    problem = report.problems[0]
    assert 'subject "s"' in problem and str(flat) in problem and '2-D transform cannot map a 3-D grid' in problem
    with pytest.raises(pt.ManifestError, match='2-D transform cannot map a 3-D grid'):
        pt.subjects_from_manifest(path)


@pytest.mark.parametrize('content, message', [
    ('{"s": {"images": [', 'invalid JSON'),
    (None, 'manifest not found'),
    ('{"s": {"images": []}}', 'images'),
])
def test_validate_unreadable_manifests(tmp_path, capsys, content, message):
    path = tmp_path / 'manifest.json'
    if content is not None:
        path.write_text(content)
    assert cli.main(['validate', str(path)]) == 1
    _, err = capsys.readouterr()
    assert message in err and str(path) in err and 'Traceback' not in err


def test_validate_several_manifests_and_a_reference_space(manifest, tmp_path, capsys):
    space = tmp_path / 'space.nii.gz'
    sitk.WriteImage(synthetic.phantom(size=(10, 9, 8), spacing=(2.0, 2.0, 2.0)), str(space))
    assert cli.main(['validate', str(manifest), str(manifest), '--reference-space', str(space)]) == 0
    out, _ = capsys.readouterr()
    assert out.count('3 valid of 3 listed') == 2
    assert '10 x 9 x 8 (3 subj.)' in out
    assert cli.main(['validate', str(manifest), '--reference-space', str(tmp_path / 'nope.nii.gz')]) == 1
    assert 'reference_space' in capsys.readouterr().err


def test_validate_and_cache_a_multi_csv_manifest(manifest, tmp_path, capsys):
    records = json.loads(manifest.read_text())
    folder = manifest.parent
    images = ['id,sequence,path'] + [f'{k},{name},{folder / p}' for k, v in records.items()
                                     for name, p in zip(('t1', 't2'), v['images'])]
    labels = ['id,label_type,path'] + [f'{k},tissue,{folder / v["labelmaps"][0]}' for k, v in records.items()]
    (tmp_path / 'images.csv').write_text('\n'.join(images) + '\n')
    (tmp_path / 'labelmaps.csv').write_text('\n'.join(labels) + '\n')
    tables = [str(tmp_path / 'images.csv'), str(tmp_path / 'labelmaps.csv')]
    assert cli.main(['validate', '--multi-csv', *tables]) == 0
    out = capsys.readouterr().out
    assert out.startswith(', '.join(tables)) and '3 valid of 3 listed' in out
    args = ['cache', '--multi-csv', *tables, '--cache-dir', str(tmp_path / 'cache'), '--workers', '0', '--no-progress']
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith('9 volume(s): ')  # 3 subjects x (t1, t2, labels)
    # Without --multi-csv each table is a manifest of its own: the label table alone is not one.
    assert cli.main(['validate', *tables]) == 1
    err = capsys.readouterr().err
    assert 'need --multi-csv' in err and 'Traceback' not in err


# ---------------------------------------------------------------------- cache


def test_cache_fills_then_hits_and_resumes(manifest, tmp_path, capsys):
    cache_dir = tmp_path / 'cache'
    args = ['cache', str(manifest), '--cache-dir', str(cache_dir), '--workers', '0', '--no-progress']
    assert cli.main(args) == 0
    out, _ = capsys.readouterr()
    cache = VolumeCache(cache_dir)
    entries = cache.stats().entries
    assert entries > 0
    assert out.startswith('12 volume(s): ')  # 3 subjects x (t1, t2, roi, labels)
    hits = int(out.split(' hit(s)')[0].split()[-1])
    misses = int(out.split(' miss(es)')[0].split()[-1])
    assert hits + misses == 12 and misses == entries  # identical label files share one entry
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith('12 volume(s): 12 hit(s), 0 miss(es), 0 recovered, 0 B written')
    # Interrupted run: some entries missing. The next run computes only those.
    removed = [key for key, _, _ in cache.entries()][:2]
    for key in removed:
        cache.remove(key)
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert ' 2 miss(es)' in out and f'{entries} entries' in out
    # Training finds every volume the command cached, equal to what it computes without cache.
    training_cache = VolumeCache(cache_dir)
    warm = pt.subjects_from_manifest(manifest, cache_dir=training_cache)
    cold = pt.subjects_from_manifest(manifest)
    for a, b in zip(warm, cold):
        for name, image in a.get_images_dict(intensity_only=False).items():
            assert np.array_equal(image.data.numpy(), b[name].data.numpy())
    assert training_cache.counts['misses'] == 0 and training_cache.counts['hits'] == 12


def test_cache_options_match_the_training_options(manifest, tmp_path, capsys):
    cache_dir = tmp_path / 'cache'
    args = ['cache', str(manifest), '--cache-dir', str(cache_dir), '--workers', '0', '--no-progress',
            '--reference', '1', '--interpolator', 'bspline', '--dtype', 'float16', '--default-value', '-5',
            '--orientation', 'RAS']
    assert cli.main(args) == 0
    capsys.readouterr()
    cache = VolumeCache(cache_dir)
    subjects = pt.subjects_from_manifest(manifest, cache_dir=cache, reference=1, interpolator='bspline',
                                         dtype=torch.float16, default_value=-5, orientation='RAS')
    for subject in subjects:
        subject.load()
    assert cache.counts['misses'] == 0
    assert subjects[0]['images'].data.dtype == torch.float16
    meta = subjects[0]['meta']
    assert meta['reference_used'] == meta['source_paths']['images'][1]  # the T2's grid
    assert subjects[0]['images'].data.shape[1:] == tuple(meta['size'][::-1])


def test_cache_respects_max_bytes(manifest, tmp_path, capsys):
    cache_dir = tmp_path / 'cache'
    limit = 40_000  # fewer bytes than the 12 volumes need
    args = ['cache', str(manifest), '--cache-dir', str(cache_dir), '--workers', '1', '--no-progress',
            '--max-bytes', str(limit)]
    assert cli.main(args) == 0
    capsys.readouterr()
    stats = VolumeCache(cache_dir).stats()
    assert 0 < stats.bytes <= limit


def test_cache_bad_manifest_exits_1_with_one_line_per_problem(bad_manifest, tmp_path, capsys):
    code = cli.main(['cache', str(bad_manifest), '--cache-dir', str(tmp_path / 'c'), '--workers', '0'])
    assert code == 1
    _, err = capsys.readouterr()
    assert 'missing.nii.gz: file not found' in err and 'Traceback' not in err


def test_cache_fills_the_good_subjects_of_a_manifest_with_bad_ones(manifest, tmp_path, capsys):
    records = json.loads(manifest.read_text())
    records = {k: {**v, 'images': [str(manifest.parent / p) for p in v['images']],
                   'rois': [str(manifest.parent / p) for p in v['rois']],
                   'labelmaps': [str(manifest.parent / p) for p in v['labelmaps']]} for k, v in records.items()}
    records['sub-01']['images'][1] = str(tmp_path / 'missing.nii.gz')
    path = tmp_path / 'one_bad.json'
    path.write_text(json.dumps(records))
    args = ['cache', str(path), '--cache-dir', str(tmp_path / 'cache'), '--workers', '0', '--no-progress']
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    assert out.startswith('8 volume(s): ')  # sub-00 and sub-02: t1, t2, roi, labels each
    assert err.count('\n') == 1 and 'subject "sub-01"' in err and 'missing.nii.gz: file not found' in err
    # The good subjects are warm for training.
    good = {k: v for k, v in records.items() if k != 'sub-01'}
    training_cache = VolumeCache(tmp_path / 'cache')
    for subject in pt.subjects_from_manifest(good, cache_dir=training_cache):
        subject.load()
    assert training_cache.counts['misses'] == 0 and training_cache.counts['hits'] == 8


def test_cache_fills_the_good_subjects_with_their_declared_extra_fields(manifest, tmp_path, capsys):
    """The good subjects come from the same planning, extra fields included (no second reading)."""
    records = json.loads(manifest.read_text())
    records = {k: {**v, 'images': [str(manifest.parent / p) for p in v['images']],
                   'rois': [str(manifest.parent / p) for p in v['rois']],
                   'labelmaps': [str(manifest.parent / p) for p in v['labelmaps']],
                   'labelmap': 'a grade, not a file'} for k, v in records.items()}  # close to "labelmaps"
    records['sub-01']['images'][1] = str(tmp_path / 'missing.nii.gz')
    path = tmp_path / 'one_bad.json'
    path.write_text(json.dumps(records))
    args = ['cache', str(path), '--cache-dir', str(tmp_path / 'cache'), '--workers', '0', '--no-progress',
            '--extra-field', 'labelmap']
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    assert out.startswith('8 volume(s): ')  # sub-00 and sub-02 were cached
    assert err.count('\n') == 1 and 'missing.nii.gz: file not found' in err


def test_cache_lists_files_that_fail_to_load_and_caches_the_rest(tmp_path, capsys):
    folder = tmp_path / 'data'
    manifest = synthetic.write_dataset(folder, num_subjects=2, size=SIZE, second_image=False)
    # A readable header whose voxel file is missing: validate passes, loading fails.
    sitk.WriteImage(sitk.ReadImage(str(folder / 'sub-01_labels.nii.gz')), str(folder / 'labels.mhd'))
    (folder / 'labels.raw').unlink()
    records = json.loads(manifest.read_text())
    records['sub-01']['labelmaps'] = ['labels.mhd']
    manifest.write_text(json.dumps(records))
    args = ['cache', str(manifest), '--cache-dir', str(tmp_path / 'cache'), '--workers', '0', '--no-progress']
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    assert out.startswith('6 volume(s): ')
    assert err.count('\n') == 1 and 'subject "sub-01"' in err and 'labels.mhd' in err
    assert 'Traceback' not in err
    assert VolumeCache(tmp_path / 'cache').stats().entries >= 4


def test_cache_interrupted_or_with_a_dead_worker_exits_cleanly(manifest, tmp_path, capsys, monkeypatch):
    args = ['cache', str(manifest), '--cache-dir', str(tmp_path / 'cache'), '--workers', '0', '--no-progress']
    calls = []

    def interrupted(reader, path):
        if calls:
            raise KeyboardInterrupt
        calls.append(path)
        return real(reader, path)

    real = cache_fill.fill_one
    monkeypatch.setattr(cache_fill, 'fill_one', interrupted)
    assert cli.main(args) == 130
    assert 'run it again to resume' in capsys.readouterr().err
    assert VolumeCache(tmp_path / 'cache').stats().entries == 1  # the finished entry is kept
    monkeypatch.setattr(cache_fill, 'fill_one', real)
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    entries = VolumeCache(tmp_path / 'cache').stats().entries
    assert f' {entries - 1} miss(es)' in out  # only what the interrupted run had not finished

    def broken(jobs, workers):
        raise BrokenProcessPool('a child process terminated abruptly')
        yield

    monkeypatch.setattr(cache_fill, 'fill', broken)  # imported when cache runs
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert 'worker process died' in err and 'Traceback' not in err


def test_cache_in_parallel_through_python_m(manifest, tmp_path):
    cache_dir = tmp_path / 'cache'
    result = run_module('cache', str(manifest), '--cache-dir', str(cache_dir), '--workers', '2', '--no-progress')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('12 volume(s): ')
    cache = VolumeCache(cache_dir)
    assert cache.stats().entries > 0
    assert all(cache.check(key) is None for key, _, _ in cache.entries())
    assert not list(cache_dir.rglob('*.tmp'))


# ----------------------------------------------------------------------- info


def test_info_lists_versions_backend_and_cache(manifest, tmp_path, capsys):
    assert cli.main(['info']) == 0
    out = capsys.readouterr().out
    for name in ('torch', 'torchio', 'SimpleITK', 'numpy', 'pyable', 'active backend'):
        assert name in out
    assert pt.io.backend.active_backend() in out
    cache_dir = tmp_path / 'cache'
    cli.main(['cache', str(manifest), '--cache-dir', str(cache_dir), '--workers', '0', '--no-progress'])
    capsys.readouterr()
    entries = VolumeCache(cache_dir).stats().entries
    assert cli.main(['info', '--cache-dir', str(cache_dir), '--check']) == 0
    out = capsys.readouterr().out
    assert f'cache entries      {entries}' in out and '0 bad entries' in out
    _, array_path, _ = next(VolumeCache(cache_dir).entries())
    array_path.write_bytes(array_path.read_bytes()[:-8])
    assert cli.main(['info', '--cache-dir', str(cache_dir), '--check']) == 1
    out, err = capsys.readouterr()
    assert '1 bad entry' in out and 'truncated' in err
    sidecar = array_path.with_suffix('.json')
    source = json.loads(sidecar.read_text())['source']
    assert f'(of {source})' in err  # the damaged entry's source file, not only its hash
    assert cli.main(['info', '--cache-dir', str(tmp_path / 'nope')]) == 1
    assert 'does not exist' in capsys.readouterr().err
    assert cli.main(['info', '--check']) == 2  # nothing to check
    assert '--check needs --cache-dir' in capsys.readouterr().err


# ------------------------------------------------------------- command line


def test_usage_errors_exit_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(['cache', 'm.json']) == 2  # --cache-dir is required
    assert cli.main(['cache', 'm.json', '--cache-dir', 'c', '--max-bytes', 'lots']) == 2
    assert cli.main(['cache', 'm.json', '--cache-dir', 'c', '--workers', '-1']) == 2
    assert cli.main(['--help']) == 0
    err = capsys.readouterr().err
    assert 'not a size' in err and 'Traceback' not in err


@pytest.mark.parametrize('text, expected', [('1000', 1000), ('2K', 2048), ('1.5M', 1572864), ('20G', 20 * 2**30),
                                            ('3GiB', 3 * 2**30), ('1e9', 10**9)])
def test_parse_size(text, expected):
    assert cli_args.parse_size(text) == expected


def test_version(capsys):
    assert cli.main(['--version']) == 0
    assert capsys.readouterr().out.strip() == f'pyable-tio {importlib.metadata.version("pyable-tio")}'


def test_ctrl_c_during_start_up_prints_no_traceback(tmp_path):
    """The command line catches Ctrl-C while torch is still being imported."""
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get('PYTHONPATH', '')])}
    # --help parses without torch (issue 20); cache imports it when it starts to work.
    code = 'import sys, pyable_tio_cli; sys.exit(pyable_tio_cli.main(["cache", "m.json", "--cache-dir", "c"]))'
    process = subprocess.Popen([sys.executable, '-c', code], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    time.sleep(0.8)  # the interpreter is up, torch's import (seconds) is under way
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and 'Traceback' not in err and 'interrupted' in err


def test_validate_names_every_problem_at_once(manifest, tmp_path, capsys):
    """An empty subject, a missing file, a misspelt field and a misspelt reference: all named in one run."""
    folder = manifest.parent
    first = json.loads(manifest.read_text())['sub-00']
    images = [str(folder / p) for p in first['images']]
    records = {
        'empty': {},
        'gone': {'images': [images[0], str(tmp_path / 'gone.nii.gz')]},
        'typo': {'images': images, 'labelmap': [str(folder / first['labelmaps'][0])]},
        'ref': {'images': images, 'reference': 'largset'},
        'fine': {'images': images},
    }
    path = tmp_path / 'four.json'
    path.write_text(json.dumps(records))
    assert cli.main(['validate', str(path)]) == 1
    out, err = capsys.readouterr()
    assert '1 valid of 5 listed' in out
    lines = err.splitlines()

    def line_of(subject_id: str) -> str:
        return next(line for line in lines if f'subject "{subject_id}"' in line)

    assert f'file {path}: field "images": no images listed' in line_of('empty')
    assert f'field "images": file {tmp_path / "gone.nii.gz"}: file not found' in line_of('gone')
    assert 'field "labelmap": unknown field, did you mean "labelmaps"?' in line_of('typo')
    assert '"largset" is neither "first" nor "largest"' in line_of('ref') and 'not found' not in line_of('ref')
    assert '4 problems found' in err
    assert cli.main(['validate', str(path), '--extra-field', 'labelmap']) == 1
    assert 'labelmap' not in capsys.readouterr().err


def test_validate_csv_column_typo_names_subject_and_file(manifest, tmp_path, capsys):
    folder = manifest.parent
    first = json.loads(manifest.read_text())['sub-00']
    csv = tmp_path / 'typo.csv'
    csv.write_text('id,image_paths,labelmap_path\n'
                   f'a,{folder / first["images"][0]},{folder / first["labelmaps"][0]}\n')
    assert cli.main(['validate', str(csv)]) == 1
    err = capsys.readouterr().err
    assert f'{csv}: subject "a": file {csv}: field "labelmap_path": unknown field, did you mean "labelmap_paths"?' in err


def test_validate_plans_like_training(manifest, tmp_path, capsys):
    """orientation=, axis_aligned= and align= run in validate, from the planning code of subjects_from_manifest."""
    from pyable_tio.checking import headers as planning

    assert cli.main(['validate', str(manifest), '--orientation', 'RAS']) == 0
    assert 'reference sizes' in capsys.readouterr().out
    report = validate(manifest, orientation='RAS', axis_aligned=True)
    subjects = pt.subjects_from_manifest(manifest, orientation='RAS', axis_aligned=True)
    sizes = {' x '.join(map(str, s['meta']['size'])) for s in subjects}
    assert set(report.reference_sizes) == sizes and {s['meta']['orientation'] for s in subjects} == {'RAS'}
    calls = []
    real = planning.plan_manifest

    def spy(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(planning, 'plan_manifest', spy)  # what plan_source, shared by both, calls
        validate(manifest, orientation='RAS', align='rigid')
        pt.subjects_from_manifest(manifest, orientation='RAS', align='rigid')
    assert len(calls) == 2 and calls[0] == calls[1]  # the same frozen options, the same planning code
    assert calls[0].align == 'rigid' and calls[0].orientation == 'RAS'
    assert cli.main(['validate', str(manifest), '--orientation', 'XYZ']) == 2  # checked before any header
    assert cli.main(['validate', str(manifest), '--align', 'rigid']) == 0
    with pytest.raises(ValueError, match='largset'):
        validate(manifest, reference='largset')


def test_python_m_pyable_tio_reports_problems_without_traceback(bad_manifest):
    bad = run_module('validate', str(bad_manifest))
    assert bad.returncode == 1
    assert 'missing.nii.gz: file not found' in bad.stderr and 'Traceback' not in bad.stderr
