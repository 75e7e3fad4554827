"""The whole loop: manifest -> patch queue -> a training step -> grid inference -> native-space files.

A tiny ``torch.nn.Conv3d`` is trained for one step on label-centred patches, run over a whole
subject patch by patch (``pt.inference_loader``), and its prediction is written twice: the
label map on the grid of the subject's label file, and a probability map on the grid of the
oblique, thick-slice T2, each with that file's own spacing, origin and direction.
Run: ``python examples/example_inference.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic

#: Synthetic label values 0, 1, 2, 7 as class indices 0..3, and back.
CLASS_VALUES = torch.tensor(synthetic.LABEL_VALUES)
VALUE_TO_CLASS = torch.zeros(int(CLASS_VALUES.max()) + 1, dtype=torch.long)
VALUE_TO_CLASS[CLASS_VALUES] = torch.arange(len(CLASS_VALUES))


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix='pyable-tio-inference-') as folder:
        manifest = synthetic.write_dataset(folder, num_subjects=3, size=(28, 24, 16))
        queue = pt.queue_from_manifest(
            manifest, patch_size=(8, 16, 16), samples_per_volume=2, max_length=6, sampler='label',
            transform=tio.ZNormalization(),
        )
        model = torch.nn.Conv3d(2, len(CLASS_VALUES), kernel_size=3, padding=1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        batch = next(iter(tio.SubjectsLoader(queue, batch_size=4)))
        images, labels = batch['images'][tio.DATA], batch['labelmap_0'][tio.DATA]
        loss = torch.nn.functional.cross_entropy(model(images), VALUE_TO_CLASS[labels[:, 0].long()])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f'training step on patches {tuple(images.shape)} (B, C, D, H, W), loss {loss.item():.3f}')

        # Intensity transforms are ignored when the prediction is sent back.
        subject = pt.dataset_from_manifest(manifest, transform=tio.ZNormalization())[0]
        loader, aggregator = pt.inference_loader(subject, (8, 16, 16), patch_overlap=(2, 4, 4), overlap_mode='hann')
        with torch.no_grad():
            for patches in loader:
                aggregator.add_batch(model(patches['images'][tio.DATA]), patches[tio.LOCATION])
        logits = aggregator.get_output_tensor()
        print(f'{len(loader.dataset)} patches -> logits {tuple(logits.shape)} (C, D, H, W) on the subject grid')

        values = CLASS_VALUES[logits.argmax(0, keepdim=True)]  # back to the label file's values
        seg_path = pt.save_prediction(values, subject, Path(folder) / 'sub-00_seg.nii.gz', target='labelmap_0')
        probability = torch.softmax(logits, 0)[1:].sum(0, keepdim=True)  # P(foreground)
        t2_path = subject['meta']['source_paths']['images'][1]
        prob_path = pt.save_prediction(probability, subject, Path(folder) / 'sub-00_prob_t2.nii.gz', target=t2_path)

        for saved, target in ((seg_path, subject['meta']['source_paths']['labelmaps'][0]), (prob_path, t2_path)):
            written, original = sitk.ReadImage(str(saved)), sitk.ReadImage(target)
            same = (
                written.GetSize() == original.GetSize()
                and np.allclose(written.GetSpacing(), original.GetSpacing(), atol=1e-6)
                and np.allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-6)
                and np.allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)
            )
            print(f'{saved.name}: {written.GetPixelIDTypeAsString()}, size {written.GetSize()} (x, y, z),'
                  f' same grid as {Path(target).name}: {same}')
        labels_back = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path)))
        print(f'label values written: {sorted(np.unique(labels_back).tolist())}')


if __name__ == '__main__':
    main()
