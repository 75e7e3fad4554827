"""A PyTorch Lightning ``LightningDataModule``: a training patch queue and whole-volume validation.

Lightning is optional (``pip install "pyable-tio[lightning]"``); this module imports it, the rest
of the package never does. The module shards subjects over DDP ranks itself
(``queue_from_manifest(distributed=True)``), so the trainer must not add its own sampler:
``L.Trainer(..., use_distributed_sampler=False)``.

Example:
    >>> import lightning as L  # doctest: +SKIP
    >>> from pyable_tio.datasets.lightning import PatchDataModule  # doctest: +SKIP
    >>> data = PatchDataModule('train.json', 'val.json', patch_size=(32, 64, 64))  # doctest: +SKIP
    >>> L.Trainer(max_epochs=10, use_distributed_sampler=False).fit(model, datamodule=data)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torchio as tio
from torch.utils.data import DistributedSampler

from ..errors import MissingDependencyError

try:
    import lightning as L
except ImportError:  # pragma: no cover - lightning is in the dev extra
    raise MissingDependencyError(
        'pyable_tio.datasets.lightning needs PyTorch Lightning: pip install "pyable-tio[lightning]"'
    ) from None

from ..constants import MISSING_ERROR
from ..queues import QueueSampler, dataset_from_manifest, queue_from_manifest

__all__ = ['PatchDataModule']


class PatchDataModule(L.LightningDataModule):
    """Training patches from a manifest (a patch queue) and whole validation volumes from another.

    ``setup`` builds the subjects on every rank, after the process group exists. With more
    than one rank, the training queue gives each rank its own subjects
    (``queue_from_manifest(distributed=True)``) and the validation loader its own share of the
    validation subjects; Lightning's ``set_epoch`` call on the training loader's sampler
    (:class:`pyable_tio.QueueSampler`) reshuffles them every epoch. Pass
    ``use_distributed_sampler=False`` to the ``Trainer``: its sampler would shard the patches of
    each rank a second time.

    Seeding: ``seed`` sets the subject order of every epoch (the same on every rank); patch
    positions and augmentation draw from torch's global generator, which
    ``L.seed_everything(seed)`` seeds. The same seeds give the same batches.

    Args:
        train_manifest: Training manifest (anything :func:`pyable_tio.read_manifest` takes).
        val_manifest: Validation manifest, or None (no validation loader).
        patch_size: Patch size in D,H,W (Z,Y,X); an int for cubes.
        samples_per_volume: Patches drawn from each loaded subject.
        max_length: Patches kept in the queue.
        batch_size: Patches per training batch.
        val_batch_size: Whole volumes per validation batch (1 unless all have one shape).
        sampler: ``"uniform"``, ``"label"``, ``"weighted"`` or a ``tio.data.PatchSampler``.
        label_name: Label map or ROI for the label/weighted samplers (default: the first).
        transform: Training transform (TorchIO, or ``pyable_tio.transforms``); per-patch steps
            run on each patch.
        val_transform: Validation transform (e.g. intensity normalisation only).
        num_workers: Workers loading training subjects (the queue's own).
        val_num_workers: DataLoader workers of the validation loader.
        seed: Seed of the subject order.
        subject_kwargs: Passed to :func:`pyable_tio.subjects_from_manifest` for both manifests
            (``cache_dir``, ``reference``, ``missing``, ``on_error``...).
        queue_kwargs: Other arguments of :func:`pyable_tio.queue_from_manifest`.

    Example:
        >>> data = PatchDataModule('train.json', 'val.json', patch_size=32, batch_size=4,
        ...                        subject_kwargs={'cache_dir': '/scratch/cache'})  # doctest: +SKIP
        >>> trainer = L.Trainer(strategy='ddp', devices=2, use_distributed_sampler=False)  # doctest: +SKIP
        >>> trainer.fit(model, datamodule=data)  # doctest: +SKIP
    """

    def __init__(
        self,
        train_manifest: Any,
        val_manifest: Any = None,
        *,
        patch_size: int | Sequence[int],
        samples_per_volume: int = 8,
        max_length: int = 64,
        batch_size: int = 4,
        val_batch_size: int = 1,
        sampler: str | tio.data.PatchSampler = 'uniform',
        label_name: str | None = None,
        transform: Callable | None = None,
        val_transform: Callable | None = None,
        num_workers: int = 0,
        val_num_workers: int = 0,
        seed: int = 0,
        subject_kwargs: Mapping[str, Any] | None = None,
        queue_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.train_manifest, self.val_manifest = train_manifest, val_manifest
        self.patch_size, self.samples_per_volume, self.max_length = patch_size, samples_per_volume, max_length
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.sampler, self.label_name = sampler, label_name
        self.transform, self.val_transform = transform, val_transform
        self.num_workers, self.val_num_workers, self.seed = num_workers, val_num_workers, seed
        self.subject_kwargs = dict(subject_kwargs or {})
        self.queue_kwargs = dict(queue_kwargs or {})
        self.train_queue: tio.Queue | None = None
        self.val_dataset: tio.SubjectsDataset | None = None

    @property
    def distributed(self) -> bool:
        """Whether this run has several ranks in an initialised process group."""
        trainer = getattr(self, 'trainer', None)
        ranks = trainer.world_size if trainer is not None else 1
        return ranks > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def setup(self, stage: str | None = None) -> None:
        """Build the training queue (``fit``) and the validation dataset (``fit``/``validate``)."""
        if stage in (None, 'fit') and self.train_queue is None:
            kwargs = {'missing': MISSING_ERROR, **self.subject_kwargs, **self.queue_kwargs}
            self.train_queue = queue_from_manifest(
                self.train_manifest, patch_size=self.patch_size, samples_per_volume=self.samples_per_volume,
                max_length=self.max_length, sampler=self.sampler, label_name=self.label_name,
                transform=self.transform, num_workers=self.num_workers, distributed=self.distributed,
                seed=self.seed, **kwargs,
            )
        if stage in (None, 'fit', 'validate') and self.val_manifest is not None and self.val_dataset is None:
            kwargs = {'missing': MISSING_ERROR, **self.subject_kwargs}
            self.val_dataset = dataset_from_manifest(self.val_manifest, transform=self.val_transform, **kwargs)

    def train_dataloader(self) -> tio.SubjectsLoader:
        """Batches of patches; the queue does the parallel work (the loader has no workers)."""
        queue = self.train_queue
        return tio.SubjectsLoader(queue, batch_size=self.batch_size, num_workers=0, sampler=QueueSampler(queue))

    def val_dataloader(self) -> tio.SubjectsLoader | list:
        """Whole validation volumes; under DDP each rank gets its share (DistributedSampler pads with repeats)."""
        if self.val_dataset is None:
            return []
        sampler = None
        if self.distributed:
            sampler = DistributedSampler(self.val_dataset, shuffle=False, drop_last=False)
        return tio.SubjectsLoader(
            self.val_dataset, batch_size=self.val_batch_size, shuffle=False, sampler=sampler,
            num_workers=self.val_num_workers,
        )
