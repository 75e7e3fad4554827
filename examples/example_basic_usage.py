"""Whole volumes as plain dicts with ``PyableDataset``, batched with ``pt.collate``.

Writes the sample data to a temp folder, then prints each subject's shapes (C, D, H, W: the
images' Z,Y,X order), its ROIs and label values, and one padded batch with its mask.
Run: ``python examples/example_basic_usage.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from torch.utils.data import DataLoader

import pyable_tio as pt

sys.path.insert(0, str(Path(__file__).resolve().parent / 'data'))
from make_sample_data import make_sample_data  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory(prefix='pyable-tio-example-') as folder:
        manifest = make_sample_data(folder)
        dataset = pt.PyableDataset(manifest)  # headers only: nothing is loaded yet
        print(f'{len(dataset)} subjects: {dataset.ids}')
        for index in range(len(dataset)):
            item = dataset[index]  # loads, transforms and resamples this subject's files
            meta = item['meta']
            labels = sorted(item['labelmaps'][0].unique().tolist())
            print(f'{item["id"]}: images {tuple(item["images"].shape)} (C, D, H, W), '
                  f'{len(item["rois"])} ROI(s), label values {labels}')
            print(f'  spacing ({meta["axis_order"]}) {tuple(round(s, 2) for s in meta["spacing"])}, '
                  f'reference {Path(meta["reference_used"]).name}, transforms {len(meta["transforms_applied"])}')
        loader = DataLoader(dataset, batch_size=3, collate_fn=pt.collate)
        batch = next(iter(loader))
        print(f'batch images {tuple(batch["images"].shape)} (B, C, D, H, W), '
              f'mask {tuple(batch["mask"].shape)}, rois {tuple(batch["rois"].shape)}')
        print(f'valid voxels per subject: {batch["mask"].flatten(1).sum(1).tolist()}')
        print(f'ROIs present: {batch["rois_present"].sum(1).tolist()}, class labels {batch["label"].tolist()}')


if __name__ == '__main__':
    main()
