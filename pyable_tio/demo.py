"""The main job in one command: synthetic data to a temp folder, subjects, patches, shapes.

Run it with ``python -m pyable_tio.demo`` (``--keep`` keeps the folder).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torchio as tio

from . import synthetic
from .io.backend import active_backend
from .patching.split import plan_transform
from .queues import queue_from_manifest
from .subjects import subjects_from_manifest


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m pyable_tio.demo``; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--subjects', type=int, default=4)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--keep', action='store_true', help='keep the temp folder')
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix='pyable-tio-demo-'))
    try:
        run(folder, args.subjects, args.workers)
    finally:
        if args.keep:
            print(f'data kept in {folder}')
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def run(folder: Path, num_subjects: int, workers: int) -> None:
    """Write ``num_subjects`` synthetic subjects to ``folder``, build them and stream patches."""
    print(f'backend: {active_backend()}; writing {num_subjects} synthetic subjects to {folder}')
    manifest = synthetic.write_dataset(folder, num_subjects)
    subject = subjects_from_manifest(manifest)[0]
    images, labels = subject['images'], subject['labelmap_0']
    print(f'subject {subject["id"]}: images {tuple(images.shape)} (C, D, H, W), spacing (x,y,z) '
          f'{subject["meta"]["spacing"]}, orientation {subject["meta"]["orientation"]}')
    print(f'  label values after resampling: {sorted(labels.data.unique().tolist())}')
    transform = tio.Compose([tio.RandomAffine(degrees=10), tio.RandomGamma(),
                             tio.RandomFlip(axes=('LR',))])
    print('augmentation (pt.plan_transform):\n  ' + str(plan_transform(transform)).replace('\n', '\n  '))
    queue = queue_from_manifest(
        manifest, patch_size=(16, 32, 32), samples_per_volume=4, max_length=16,
        sampler='label', label_name='labelmap_0', transform=transform, num_workers=workers,
    )
    start = time.perf_counter()
    count = 0
    for batch in tio.SubjectsLoader(queue, batch_size=4):
        x, y = batch['images'][tio.DATA], batch['labelmap_0'][tio.DATA]
        assert torch.isfinite(x).all()
        count += x.shape[0]
        print(f'  batch images {tuple(x.shape)} (B, C, D, H, W); label values {sorted(int(v) for v in y.unique())}')
    print(f'{count} patches in {time.perf_counter() - start:.2f} s')


if __name__ == '__main__':
    raise SystemExit(main())
