"""Every ``examples/example_*.py`` runs to completion on synthetic data and prints what it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyable_tio as pt

EXAMPLES = Path(__file__).resolve().parent.parent / 'examples'
DATA = EXAMPLES / 'data'
TIMEOUT = 180  # generous: CI machines are shared; each example takes seconds

#: Lines (substrings) an example must print; examples not listed must exit 0 and print something.
EXPECTED = {
    'example_basic_usage.py': [
        "3 subjects: ['sub-01', 'sub-02', 'sub-03']",
        'sub-01: images (2, 20, 28, 32) (C, D, H, W), 1 ROI(s), label values [0, 1, 2, 7]',
        'sub-02: images (2, 18, 30, 28) (C, D, H, W), 0 ROI(s), label values [0, 1, 2, 7]',
        'sub-03: images (2, 24, 36, 36) (C, D, H, W), 2 ROI(s), label values [0, 1, 2, 7]',
        'reference sub-03_t2.nii.gz',
        'batch images (3, 2, 24, 36, 36) (B, C, D, H, W), mask (3, 1, 24, 36, 36), rois (3, 2, 24, 36, 36)',
        'valid voxels per subject: [17920, 15120, 31104]',
        'ROIs present: [1, 0, 2], class labels [0, 1, 1]',
    ],
    'example_with_transforms.py': [
        'sub-01: images (2, 20, 28, 32), labels still in {0, 1, 2, 7}: True, mean in body per channel [0.0, 0.0]',
        'sub-03: images (2, 24, 36, 36), labels still in {0, 1, 2, 7}: True',
        'validation item sub-01: images (2, 20, 28, 32)',
    ],
    'example_queue_patches.py': [
        'patch batch images (4, 2, 8, 16, 16) (B, C, D, H, W), labels (4, 1, 8, 16, 16), rois (4, 1, 8, 16, 16)',
        '12 patches from 3 subjects',
    ],
}


def data_files() -> set[Path]:
    return {p for p in DATA.iterdir() if p.name.endswith(('.nii.gz', '.tfm'))}


@pytest.mark.parametrize('script', sorted(EXAMPLES.glob('example_*.py')), ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path):
    before = data_files()
    env = {**os.environ, 'PYTHONHASHSEED': '0', 'MPLBACKEND': 'Agg'}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert result.returncode == 0, f'{script.name} failed:\n{result.stdout}\n{result.stderr}'
    assert result.stdout.strip(), f'{script.name} printed nothing'
    for line in EXPECTED.get(script.name, []):
        assert line in result.stdout, f'{script.name}: expected {line!r} in:\n{result.stdout}'
    # Examples write their data to a temp folder, never into the repository.
    assert data_files() == before


def test_all_documented_examples_exist():
    for name in EXPECTED:
        assert (EXAMPLES / name).is_file()


def test_sample_manifest_is_relative_and_make_sample_data_writes_its_files(tmp_path):
    sys.path.insert(0, str(DATA))
    try:
        from make_sample_data import make_sample_data
    finally:
        sys.path.remove(str(DATA))
    raw = json.loads((DATA / 'sample_manifest.json').read_text())
    paths = [p if isinstance(p, str) else p['path']
             for subject in raw.values() for field in ('images', 'rois', 'labelmaps', 'transforms')
             for p in subject.get(field, [])]
    assert paths and not any(Path(p).is_absolute() for p in paths)
    manifest_path = make_sample_data(tmp_path)
    manifest = pt.read_manifest(manifest_path)  # raises if a listed file is missing
    assert manifest.ids == ['sub-01', 'sub-02', 'sub-03']
    assert all(entry.path.parent == tmp_path for record in manifest for _, entry in record.entries())
    assert [len(record.rois) for record in manifest] == [1, 0, 2]


def test_demo_streams_augmented_patches_with_label_values_kept(capsys):
    """The README's demo command: per-patch augmentation planned, batches of the promised shape."""
    from pyable_tio import demo

    assert demo.main(['--subjects', '2', '--workers', '1']) == 0
    out = capsys.readouterr().out
    for step in ('RandomAffine', 'RandomGamma', 'RandomFlip'):
        assert f'per patch   {step}' in out
    batches = [line for line in out.splitlines() if 'batch images (4, 2, 16, 32, 32)' in line]
    assert len(batches) == 2
    for line in batches:  # labels are never interpolated: only the label map's own values
        assert set(json.loads(line.split('label values ')[1])) <= {0, 1, 2, 7}
    assert '8 patches in' in out
