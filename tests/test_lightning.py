"""The shipped LightningDataModule (issue 20, item 11): a real Trainer on CPU, a tiny 3-D model."""

from __future__ import annotations

import pytest
import torch
import torchio as tio

import pyable_tio as pt

L = pytest.importorskip('lightning')  # in the dev extra: CI always runs these

from pyable_tio.datasets.lightning import PatchDataModule  # noqa: E402

PATCH = (8, 8, 8)
CLASSES = 8  # the synthetic label maps hold 0, 1, 2 and 7


class TinySegmenter(L.LightningModule):
    """One 3-D convolution: images (B, 2, D, H, W) -> class scores (B, 8, D, H, W)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(2, CLASSES, kernel_size=3, padding=1)
        self.seen: dict[str, list] = {'train': [], 'val': []}

    def step(self, batch, stage: str):
        x = batch['images'][tio.DATA]
        y = batch['labelmap_0'][tio.DATA][:, 0].long()
        self.seen[stage].append((tuple(x.shape), list(batch['id'])))
        loss = torch.nn.functional.cross_entropy(self.conv(x), y)
        self.log(f'{stage}_loss', loss, batch_size=len(x))
        return loss

    def training_step(self, batch, batch_index):
        return self.step(batch, 'train')

    def validation_step(self, batch, batch_index):
        return self.step(batch, 'val')

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator='cpu', devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False, **kwargs)


def test_fast_dev_run_trains_on_patches_and_validates_on_whole_volumes(manifest):
    data = PatchDataModule(manifest, manifest, patch_size=PATCH, samples_per_volume=2, max_length=6,
                           batch_size=2, sampler='label', seed=0)
    model = TinySegmenter()
    trainer(fast_dev_run=2).fit(model, datamodule=data)
    assert [shape for shape, _ in model.seen['train']] == [(2, 2, *PATCH)] * 2
    assert [shape for shape, _ in model.seen['val']] == [(1, 2, 12, 18, 20)] * 2  # whole volumes, Z,Y,X
    assert isinstance(data.train_dataloader().sampler, pt.queues.QueueSampler)
    assert not data.distributed


def test_the_seed_sets_the_batches(manifest):
    def first_batches(seed: int) -> list:
        L.seed_everything(0, verbose=False)
        data = PatchDataModule(manifest, patch_size=PATCH, samples_per_volume=1, max_length=3, batch_size=1,
                               seed=seed, queue_kwargs={'shuffle_patches': False})
        data.setup('fit')
        return [(batch['id'][0], batch['images'][tio.DATA].sum().item()) for batch in data.train_dataloader()]

    first = first_batches(0)
    assert first == first_batches(0)
    assert sorted(i for i, _ in first) == ['sub-00', 'sub-01', 'sub-02']
    orders = {tuple(i for i, _ in first_batches(seed)) for seed in range(6)}
    assert len(orders) > 1  # the seed, not the global generator alone, orders the subjects


def _rank_main(rank: int, init_file: str, manifest: str, out_dir: str) -> None:
    import json
    from types import SimpleNamespace

    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        data = PatchDataModule(manifest, manifest, patch_size=4, samples_per_volume=1, max_length=2,
                               batch_size=1, seed=3, queue_kwargs={'shuffle_patches': False})
        data.trainer = SimpleNamespace(world_size=2)  # what a DDP Trainer gives setup()
        data.setup('fit')
        loader = data.train_dataloader()
        epochs = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)  # what Lightning calls each epoch
            epochs.append([batch['id'][0] for batch in loader])
        val = [batch['id'][0] for batch in data.val_dataloader()]
        with open(f'{out_dir}/rank{rank}.json', 'w') as file:
            json.dump({'distributed': data.distributed, 'train': epochs, 'val': val}, file)
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_get_their_own_subjects(tmp_path, tmp_path_factory):
    import json

    import torch.multiprocessing as mp

    from pyable_tio import synthetic

    manifest = synthetic.write_dataset(tmp_path_factory.mktemp('ddp'), 4, size=(10, 9, 8), second_image=False)
    mp.spawn(_rank_main, args=(str(tmp_path / 'init'), str(manifest), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]
    assert all(rank['distributed'] for rank in ranks)
    everyone = {f'sub-{i:02d}' for i in range(4)}
    for epoch in range(2):
        first, second = (set(rank['train'][epoch]) for rank in ranks)
        assert not first & second and first | second == everyone
    assert ranks[0]['train'][0] != ranks[0]['train'][1] or ranks[1]['train'][0] != ranks[1]['train'][1]
    assert sorted(ranks[0]['val'] + ranks[1]['val']) == sorted(everyone)
