"""Augmentation with ``PyableDataset``: TorchIO transforms and a seed-signature callable.

TorchIO transforms run on the loaded subject (label maps stay nearest-neighbour); a callable
``(images, rois, labelmaps, meta) -> (images, rois, labelmaps)`` then runs on the tensors.
Run: ``python examples/example_with_transforms.py``.
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


def zscore_in_body(images, rois, labelmaps, meta):
    """Seed-signature transform: per-channel z-score inside the label map's foreground."""
    body = labelmaps[0] > 0
    normalized = torch.stack([(c - c[body].mean()) / c[body].std().clamp_min(1e-6) for c in images])
    return normalized, rois, labelmaps


def main() -> None:
    torch.manual_seed(0)
    augment = tio.Compose([
        tio.RandomFlip(axes=(0,), flip_probability=1.0),  # axis 0 of our tensors is Z (D)
        tio.RandomAffine(scales=0.1, degrees=10, label_interpolation='nearest'),
    ])
    with tempfile.TemporaryDirectory(prefix='pyable-tio-example-') as folder:
        manifest = make_sample_data(folder)
        dataset = pt.PyableDataset(manifest, transforms=[augment, zscore_in_body])
        for index in range(len(dataset)):
            item = dataset[index]
            body = item['labelmaps'][0] > 0
            labels = set(item['labelmaps'][0].unique().tolist())
            means = [round(float(c[body].mean()), 3) + 0.0 for c in item['images']]
            print(f'{item["id"]}: images {tuple(item["images"].shape)}, '
                  f'labels still in {{0, 1, 2, 7}}: {labels <= {0, 1, 2, 7}}, '
                  f'mean in body per channel {means}')
        # Validation: no random transform, the same normalization.
        plain = pt.PyableDataset(manifest, transforms=zscore_in_body)[0]
        print(f'validation item {plain["id"]}: images {tuple(plain["images"].shape)}')


if __name__ == '__main__':
    main()
