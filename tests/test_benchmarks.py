"""The benchmark script runs end to end on a tiny dataset: every row's batches pass its checks.

No timing is asserted (speed is measured by running the script, see benchmarks/README.md);
this keeps the script from rotting and checks that each row yields the whole epoch of valid
patches (shapes, finite values, labels from the label map's values, never interpolated).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_queue.py'
SUBJECTS, PER_VOLUME = 2, 4


def test_bench_queue_rows_yield_a_checked_epoch(tmp_path):
    """With --augment (the per-patch path, and MONAI's recipe for e and f), warm-cache rows."""
    pytest.importorskip('monai')
    command = [sys.executable, str(SCRIPT), '--subjects', str(SUBJECTS), '--size', '40', '36', '28',
               '--patch', '16', '--samples-per-volume', str(PER_VOLUME), '--max-length', '8', '--repeat', '1',
               '--variants', 'def', '--workdir', str(tmp_path), '--augment']
    process = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(process.stdout.strip().splitlines()[-1])['results']
    assert sorted(results) == ['d', 'e', 'f']
    for variant, row in results.items():
        assert row['patches'] == SUBJECTS * PER_VOLUME, (variant, row)
        assert row['patches_per_s'] > 0 and row['peak_mem_mb'] > 0
    assert 'augmentation targets:' in process.stdout and '(f) / (e):' in process.stdout


DEVICE_SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_device.py'


def test_bench_device_runs_on_cpu_with_every_row(tmp_path):
    """bench_device.py --device cpu on a tiny dataset: every row yields its checked epoch, the
    U-Net step is timed with and without loading, and the ratios are printed."""
    rows = 'torchio,pyable-patch,pyable-batch' + (',monai-gpu' if _has('monai') else '')
    command = [sys.executable, str(DEVICE_SCRIPT), '--device', 'cpu', '--subjects', str(SUBJECTS),
               '--size', '40', '36', '28', '--patch', '16', '--samples-per-volume', str(PER_VOLUME),
               '--max-length', '8', '--workers', '0', '--repeat', '1', '--steps', '1', '--rows', rows,
               '--workdir', str(tmp_path)]
    process = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert sorted(report['results']) == sorted(rows.split(','))
    for row, figures in report['results'].items():
        assert figures['patches'] == SUBJECTS * PER_VOLUME, (row, figures)
        assert figures['patches_per_s'] > 0 and figures['gpu_peak_mb'] is None  # no GPU memory on CPU
    assert set(report['steps_ms']) == {'no_loading_ms', 'pyable-patch_ms', 'pyable-batch_ms'}
    assert 'pyable-batch / torchio:' in process.stdout


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_bench_kernel_runs_and_checks_the_engines_agree():
    """bench_kernel.py asserts numba == SimpleITK before timing; tiny sizes, no timing asserted."""
    script = SCRIPT.parent / 'bench_kernel.py'
    process = subprocess.run([sys.executable, str(script), '--repeat', '1', '--patch', '16'],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(process.stdout.strip().splitlines()[-1])
    assert set(results) == {'interpolation', 'patch', 'queue patches', 'start-up'}
    assert all(row['cpu_ms_per_patch'] > 0 for row in results['queue patches'].values())
