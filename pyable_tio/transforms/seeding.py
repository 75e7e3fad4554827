"""Validation mode: the same random transforms and the same patches for the same seed.

Every TorchIO random transform and patch sampler draws from torch's random generator, so
reproducibility reduces to torch's own mechanisms: seed the main process before a loader starts
iterating or a queue is built (``tio.Queue`` starts its subject loader in its constructor), or
call :func:`reset_queue`; each DataLoader worker is then seeded by torch with ``base_seed +
worker_id`` (``base_seed`` drawn from the seeded main generator), whatever ``num_workers`` is.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torchio as tio


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, numpy and ``random`` in this process; return a generator for loaders.

    Call it right before iterating a new ``tio.Queue`` or loader (see :func:`reset_queue` to
    replay a queue).

    Example:
        >>> _ = seed_everything(0); first = torch.rand(1)
        >>> _ = seed_everything(0); torch.equal(first, torch.rand(1))
        True
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from the seed torch gave it.

    torch seeds each worker's torch generator; numpy and ``random`` would otherwise repeat the
    parent's state in every worker. Pass it as ``DataLoader(worker_init_fn=worker_init_fn)``.

    Example:
        >>> loader = tio.SubjectsLoader(dataset, num_workers=2, worker_init_fn=worker_init_fn)  # doctest: +SKIP
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def seeded_loader(dataset: torch.utils.data.Dataset, seed: int, **kwargs: Any) -> tio.SubjectsLoader:
    """A ``tio.SubjectsLoader`` whose order and worker seeds depend only on ``seed``.

    Args:
        dataset: A ``tio.SubjectsDataset`` (or a ``tio.Queue``, then keep ``num_workers=0``).
        seed: The seed.
        **kwargs: Passed to ``tio.SubjectsLoader`` (``batch_size``, ``num_workers``, ``shuffle``).

    Example:
        >>> loader = seeded_loader(dataset, seed=0, batch_size=2, num_workers=2)  # doctest: +SKIP
    """
    kwargs.setdefault('worker_init_fn', worker_init_fn)
    return tio.SubjectsLoader(dataset, generator=seed_everything(seed), **kwargs)


def reset_queue(queue: tio.Queue, seed: int) -> tio.Queue:
    """Empty ``queue``, re-seed and restart its subject loader: the next pass replays the same patches.

    Use it at the start of each validation epoch; two queues built (or reset) with the same seed
    yield the same patches in the same order, including random transforms run in
    ``num_workers > 0`` worker processes (torch seeds each worker from the seeded main process).
    A :class:`pyable_tio.PatchQueue` (what :func:`pyable_tio.queue_from_manifest` returns without
    a transform) is replayed this way when its workers are threads (the default without a
    transform) or with ``num_workers=0``; with worker processes (``threads=False``, or a
    transform with ``fast_patches=True``), call :func:`seed_everything` and build a new queue
    instead, which is always reproducible.

    Args:
        queue: A ``tio.Queue`` (e.g. from :func:`pyable_tio.queue_from_manifest`).
        seed: The seed.

    Returns:
        The same queue.

    Raises:
        TypeError: ``queue`` is not a TorchIO 1.x queue.
        ValueError: ``queue`` is a ``PatchQueue`` with worker processes.

    Example:
        >>> for epoch in range(3):
        ...     reset_queue(validation_queue, seed=0)  # doctest: +SKIP
        ...     run_validation(tio.SubjectsLoader(validation_queue, batch_size=4))  # doctest: +SKIP
    """
    if not isinstance(queue, tio.Queue) or not hasattr(queue, '_initialize_subjects_iterable'):
        raise TypeError(f'reset_queue needs a tio.Queue (TorchIO 1.x), got {type(queue).__name__}')
    if not getattr(queue, 'replayable', True):  # pyable_tio.PatchQueue says whether it can be replayed
        # Measured: its worker processes' patch draws then change from one reset to the next.
        raise ValueError(
            'reset_queue cannot replay a pyable_tio.PatchQueue with worker processes; call '
            'seed_everything(seed) and build a new queue (queue_from_manifest) for each validation pass'
        )
    queue.patches_list = []
    # Private state of tio.Queue (and of pyable_tio.PatchQueue): partly consumed subjects.
    for name, empty in (('_incomplete_subject', None), ('_num_patches_incomplete', 0), ('_leftover', [])):
        if hasattr(queue, name):
            setattr(queue, name, empty)
    seed_everything(seed)
    # A fresh subject loader draws its shuffling order and worker seeds from the seeded generator.
    queue._subjects_iterable = None
    queue._initialize_subjects_iterable()
    return queue
