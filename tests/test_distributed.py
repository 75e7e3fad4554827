"""DDP sharding: two gloo ranks see disjoint subjects covering the manifest, reshuffled per epoch."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic

WORLD_SIZE = 2
NUM_SUBJECTS = 6
SEED = 3
EPOCHS = 3


def _rank_main(rank: int, init_file: str, manifest: str, out_dir: str) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD_SIZE)
    try:
        results = {}
        for fast in (True, False):  # pyable-tio's PatchQueue and tio.Queue
            queue = pt.queue_from_manifest(
                manifest, patch_size=4, samples_per_volume=1, max_length=2,
                shuffle_patches=False, distributed=True, seed=SEED, fast_patches=fast,
            )
            loader = tio.SubjectsLoader(queue, batch_size=1, sampler=pt.queues.QueueSampler(queue))
            epochs = []
            for epoch in range(EPOCHS):
                if epoch % 2:
                    loader.sampler.set_epoch(epoch)  # what PyTorch Lightning calls each epoch
                else:
                    pt.set_epoch(queue, epoch)
                epochs.append([batch['id'][0] for batch in loader])
            results[type(queue).__name__] = epochs
        with open(f'{out_dir}/rank{rank}.json', 'w') as file:
            json.dump(results, file)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp('ddp')
    return synthetic.write_dataset(folder, NUM_SUBJECTS, size=(10, 9, 8), second_image=False)


def test_two_ranks_shard_the_subjects(tmp_path, manifest):
    mp.spawn(_rank_main, args=(str(tmp_path / 'init'), str(manifest), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(WORLD_SIZE)]
    assert set(results[0]) == {'PatchQueue', 'Queue'}
    for kind in results[0]:
        check_shards([result[kind] for result in results])


def check_shards(ranks: list) -> None:
    all_ids = [f'sub-{i:02d}' for i in range(NUM_SUBJECTS)]
    for epoch in range(EPOCHS):
        per_rank = [set(rank[epoch]) for rank in ranks]
        assert all(len(ids) == NUM_SUBJECTS // WORLD_SIZE for ids in per_rank)
        assert not per_rank[0] & per_rank[1]  # disjoint
        assert per_rank[0] | per_rank[1] == set(all_ids)  # union = whole manifest
        # Both ranks used the same permutation: DistributedSampler's, seeded with seed + epoch.
        permutation = torch.randperm(NUM_SUBJECTS, generator=torch.Generator().manual_seed(SEED + epoch)).tolist()
        for rank_index, rank in enumerate(ranks):
            assert rank[epoch] == [all_ids[i] for i in permutation[rank_index::WORLD_SIZE]]
    global_orders = [ranks[0][e] + ranks[1][e] for e in range(EPOCHS)]
    assert len({tuple(order) for order in global_orders}) == EPOCHS  # every epoch reshuffles


def test_distributed_needs_a_process_group(manifest):
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match='init_process_group'):
        pt.queue_from_manifest(manifest, patch_size=4, samples_per_volume=1, max_length=2, distributed=True)


def test_distributed_and_subject_sampler_are_exclusive(manifest):
    sampler = torch.utils.data.SequentialSampler(range(NUM_SUBJECTS))
    with pytest.raises(ValueError, match='not both'):
        pt.queue_from_manifest(
            manifest, patch_size=4, samples_per_volume=1, max_length=2, distributed=True, subject_sampler=sampler
        )


def test_set_epoch_needs_a_distributed_queue(manifest):
    queue = pt.queue_from_manifest(manifest, patch_size=4, samples_per_volume=1, max_length=2)
    with pytest.raises(ValueError, match='distributed=True'):
        pt.set_epoch(queue, 1)
    pt.queues.QueueSampler(queue).set_epoch(1)  # a no-op, so single-process Lightning runs work
