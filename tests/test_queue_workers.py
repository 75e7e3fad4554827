"""A loader with workers over a PatchQueue fails at once with the fix, never hangs (issue 20, item 1)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pyable_tio import synthetic

#: Far above the few seconds the run takes; a regression to the old hang fails here instead of
#: blocking CI.
TIMEOUT_S = 120


@pytest.mark.parametrize('context', ['fork', 'spawn'])
def test_loader_with_workers_over_patch_queue_fails_at_once(tmp_path, context):
    manifest = synthetic.write_dataset(tmp_path, num_subjects=2, size=(20, 18, 12), second_image=False)
    script = textwrap.dedent(f'''
        import torchio as tio
        import pyable_tio as pt

        if __name__ == '__main__':
            queue = pt.queue_from_manifest({str(manifest)!r}, patch_size=(4, 8, 8), samples_per_volume=2,
                                           max_length=4, sampler='label', num_workers=2)
            assert isinstance(queue, pt.patching.queue.PatchQueue)
            loader = tio.SubjectsLoader(queue, batch_size=2, num_workers=2, multiprocessing_context={context!r})
            next(iter(loader))
    ''')
    path = tmp_path / 'run.py'
    path.write_text(script)
    try:
        result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f'a SubjectsLoader with workers over a PatchQueue hung for {TIMEOUT_S} s')
    assert result.returncode != 0
    assert 'pass num_workers=0 to the loader' in result.stderr
    assert "the queue's own num_workers (here 2) does the parallel work" in result.stderr


def test_main_process_loader_over_patch_queue_still_batches(tmp_path):
    import torchio as tio

    import pyable_tio as pt

    manifest = synthetic.write_dataset(tmp_path, num_subjects=2, size=(20, 18, 12), second_image=False)
    queue = pt.queue_from_manifest(manifest, patch_size=(4, 8, 8), samples_per_volume=2, max_length=4,
                                   sampler='label', num_workers=2)
    batches = list(tio.SubjectsLoader(queue, batch_size=2, num_workers=0))
    assert [tuple(b['images'][tio.DATA].shape) for b in batches] == [(2, 1, 4, 8, 8)] * 2
