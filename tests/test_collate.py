"""collate / PadCollate: variable shapes, ROI lists of different lengths, meta, DataLoader workers."""

from __future__ import annotations

import functools
import pickle
import warnings

import pytest
import SimpleITK as sitk
import torch
from torch.utils.data import DataLoader

import pyable_tio as pt
from pyable_tio import synthetic


def item(name, shape, channels=1, rois=(), dtype=torch.uint8, **extra):
    d, h, w = shape
    images = torch.arange(channels * d * h * w, dtype=torch.float32).reshape(channels, d, h, w) + 1
    rois = [torch.full(shape, value, dtype=dtype) for value in rois]
    return {'id': name, 'images': images, 'rois': rois, 'labelmaps': [], 'meta': {'size': shape[::-1]}, **extra}


def test_pad_to_largest_with_value_and_mask():
    a, b = item('a', (2, 3, 4), channels=2, rois=[1]), item('b', (3, 2, 5), channels=2, rois=[2, 3])
    batch = pt.collate([a, b])
    assert batch['images'].shape == (2, 2, 3, 3, 5)
    assert torch.equal(batch['images'][0, :, :2, :3, :4], a['images'])
    assert torch.equal(batch['images'][1, :, :3, :2, :5], b['images'])
    assert batch['images'][0, :, 2:].eq(0).all() and batch['images'][0, :, :, :, 4:].eq(0).all()
    mask = batch['mask']
    assert mask.shape == (2, 1, 3, 3, 5) and mask.dtype == torch.bool
    assert mask[0].sum() == 2 * 3 * 4 and mask[0, 0, :2, :3, :4].all()
    assert mask[1].sum() == 3 * 2 * 5 and mask[1, 0, :3, :2, :5].all()
    assert batch['spatial_shapes'].tolist() == [[2, 3, 4], [3, 2, 5]]
    # ROI lists of different lengths: B x R_max, with a presence mask.
    assert batch['rois'].shape == (2, 2, 3, 3, 5) and batch['rois'].dtype == torch.uint8
    assert batch['rois_present'].tolist() == [[True, False], [True, True]]
    assert batch['rois'][0, 0, :2, :3, :4].eq(1).all() and batch['rois'][0, 1].eq(0).all()
    assert batch['rois'][1, 1, :3, :2, :5].eq(3).all()
    assert batch['labelmaps'].shape == (2, 0, 3, 3, 5) and batch['labelmaps_present'].shape == (2, 0)
    assert batch['id'] == ['a', 'b'] and batch['meta'] == [a['meta'], b['meta']]


def test_pad_values_are_selectable_and_dtypes_promoted():
    a = item('a', (1, 2, 2), rois=[5], dtype=torch.uint8)
    b = item('b', (2, 2, 2), rois=[300], dtype=torch.int16)
    batch = pt.PadCollate(image_value=-7.0, label_value=9)([a, b])
    assert batch['images'][0, 0, 1].eq(-7.0).all()
    assert batch['rois'].dtype == torch.int16
    assert batch['rois'][0, 0, 1].eq(9).all() and batch['rois'][0, 0, 0].eq(5).all()
    assert batch['rois'][1, 0].eq(300).all()
    same = functools.partial(pt.collate, image_value=-7.0, label_value=9)([a, b])
    assert torch.equal(same['images'], batch['images']) and torch.equal(same['rois'], batch['rois'])


def test_list_mode_keeps_everything_per_item():
    a, b = item('a', (2, 3, 4), rois=[1], label=0), item('b', (3, 2, 5), rois=[], label=1)
    batch = pt.PadCollate(pad=False)([a, b])
    assert 'mask' not in batch
    assert [t.shape for t in batch['images']] == [(1, 2, 3, 4), (1, 3, 2, 5)]
    assert [len(r) for r in batch['rois']] == [1, 0] and batch['labelmaps'] == [[], []]
    assert batch['meta'] == [a['meta'], b['meta']] and batch['id'] == ['a', 'b']
    assert torch.equal(batch['label'], torch.tensor([0, 1]))


def test_unstacked_channels_extras_and_errors():
    a = item('a', (2, 2, 2), channels=2, label=1, note='x')
    b = item('b', (2, 2, 2), channels=2, label=0)
    a['images'] = list(a['images'])  # stack_channels=False items
    batch = pt.collate([a, b])
    assert batch['images'].shape == (2, 2, 2, 2, 2) and torch.equal(batch['images'][0], torch.stack(a['images']))
    assert torch.equal(batch['label'], torch.tensor([1, 0]))
    assert batch['note'] == ['x', None]  # missing in one item: kept as a list
    with pytest.raises(ValueError, match='channels'):
        pt.collate([item('a', (2, 2, 2), channels=1), item('b', (2, 2, 2), channels=2)])
    with pytest.raises(ValueError, match='empty'):
        pt.collate([])
    assert pickle.loads(pickle.dumps(pt.PadCollate(pad=False))) == pt.PadCollate(pad=False)


@pytest.fixture(scope='module')
def mixed_manifest(tmp_path_factory):
    """Three subjects of different grids; ROI counts 1, 0, 2."""
    folder = tmp_path_factory.mktemp('collate')
    manifest = {}
    for i, (size, spacing) in enumerate([((12, 10, 8), (1, 1, 2)), ((10, 14, 6), (1.2, 0.9, 2.5)),
                                         ((8, 8, 9), (1.5, 1.5, 1.5))]):
        image = synthetic.phantom(size, spacing, seed=i)
        t1 = folder / f's{i}_t1.nii.gz'
        sitk.WriteImage(image, str(t1))
        roi = folder / f's{i}_roi.nii.gz'
        sitk.WriteImage(sitk.Cast(synthetic.label_map(image) > 0, sitk.sitkUInt8), str(roi))
        manifest[f's{i}'] = {'images': [str(t1)], 'rois': [str(roi)] * [1, 0, 2][i], 'label': i}
    return manifest


def test_dataloader_with_workers_persistent_and_pinned(mixed_manifest):
    dataset = pt.PyableDataset(mixed_manifest)
    expected = {item['id']: item for item in (dataset[i] for i in range(len(dataset)))}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # pin_memory without an accelerator warns and is a no-op
        loader = DataLoader(dataset, batch_size=3, num_workers=2, persistent_workers=True,
                            pin_memory=True, collate_fn=pt.collate)
        batches = [batch for _ in range(2) for batch in loader]  # two epochs, same workers
    for batch in batches:
        assert batch['images'].shape == (3, 1, 9, 14, 12)
        assert batch['rois'].shape == (3, 2, 9, 14, 12)
        assert batch['rois_present'].sum(dim=1).tolist() == [1, 0, 2]
        assert torch.equal(batch['label'], torch.tensor([0, 1, 2]))
        for b, name in enumerate(batch['id']):
            d, h, w = batch['spatial_shapes'][b].tolist()
            assert torch.equal(batch['images'][b, :, :d, :h, :w], expected[name]['images'])
            assert batch['mask'][b].sum() == d * h * w
            assert batch['meta'][b]['size'] == expected[name]['meta']['size']
            for r, roi in enumerate(expected[name]['rois']):
                assert torch.equal(batch['rois'][b, r, :d, :h, :w], roi)


def test_dataloader_list_mode_with_workers(mixed_manifest):
    loader = DataLoader(pt.PyableDataset(mixed_manifest), batch_size=2, num_workers=2,
                        collate_fn=pt.PadCollate(pad=False))
    batches = list(loader)
    assert [len(b['images']) for b in batches] == [2, 1]
    assert [t.shape for t in batches[0]['images']] == [(1, 8, 10, 12), (1, 6, 14, 10)]
    assert [len(r) for r in batches[0]['rois']] == [1, 0]
