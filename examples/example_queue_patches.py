"""Patches for training: the same manifest through ``queue_from_manifest`` and a TorchIO queue.

Patches are centred on the label map (``sampler="label"``); subjects that list fewer ROIs get
all-zero ones (``missing="empty"``) so that every patch has the same keys.
Run: ``python examples/example_queue_patches.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torchio as tio

import pyable_tio as pt

sys.path.insert(0, str(Path(__file__).resolve().parent / 'data'))
from make_sample_data import make_sample_data  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix='pyable-tio-example-') as folder:
        manifest = make_sample_data(folder)
        queue = pt.queue_from_manifest(
            manifest,
            patch_size=(8, 16, 16),  # D, H, W
            samples_per_volume=4,
            max_length=12,
            sampler='label',
            label_name='labelmap_0',
            missing='empty',
            transform=tio.RandomFlip(axes=(1, 2)),
            num_workers=2,
        )
        patches = 0
        for batch in tio.SubjectsLoader(queue, batch_size=4):
            images, labels = batch['images'][tio.DATA], batch['labelmap_0'][tio.DATA]
            patches += images.shape[0]
            print(f'patch batch images {tuple(images.shape)} (B, C, D, H, W), '
                  f'labels {tuple(labels.shape)}, rois {tuple(batch["roi_1"][tio.DATA].shape)}')
            assert set(labels.unique().tolist()) <= {0, 1, 2, 7}
        print(f'{patches} patches from {len(queue.subjects_dataset)} subjects')


if __name__ == '__main__':
    main()
