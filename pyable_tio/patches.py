"""A patch queue whose workers cut the patches, reading only the patch regions when they can.

``tio.Queue`` loads every subject whole in a worker, sends the whole volumes to the main
process and crops the patches there: with 96^3 patches from 256x256x160 volumes most of the
bytes read, copied and pickled are thrown away. :class:`PatchQueue` keeps ``tio.Queue``'s
queue (same ``max_length``, ``samples_per_volume``, shuffling, subject sampler, epoch length)
but its workers return the patches of a subject instead of the subject. When the subject has
no transform and the sampler is a ``tio.UniformSampler``, ``tio.WeightedSampler`` or
``tio.LabelSampler``, a worker does not load the volumes either: it asks each image's reader
for its array (a memory map when the volume cache is on) and copies only the patch regions;
the probability map of a weighted/label sampler is the only volume read whole. That work is
mostly copying (NumPy releases the GIL), so it runs in threads of the main process: no
process start, pickling or shared-memory copy per patch. Any other sampler or a transform
loads the subject as ``tio.Queue`` does, in worker processes.

Measured with ``benchmarks/bench_queue.py`` (8 subjects of 256 x 256 x 160, 96^3 patches, 2
workers, warm cache): 10-17x the patches/s of a ``tio.Queue`` over plain TorchIO and 1.6-2.4x
MONAI's warm ``PersistentDataset`` (2-2.8x less CPU per patch), depending on the machine's load.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

import numpy as np
import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torchio.constants import LOCATION, MIN_FLOAT_32, NUM_SAMPLES
from torchio.data.sampler.label import LabelSampler
from torchio.data.sampler.uniform import UniformSampler
from torchio.data.sampler.weighted import WeightedSampler
from torchio.data.io import check_uint_to_int

from .constants import ID

# Samplers whose patch locations need only the spatial shape or the probability map.
_LAZY_GENERATORS = (UniformSampler._generate_patches, WeightedSampler._generate_patches)


class SubjectPatches(Dataset):
    """Map-style dataset: item ``i`` is the list of patches drawn from subject ``i``.

    Args:
        subjects_dataset: The subjects (unloaded; their readers are called here).
        sampler: The TorchIO patch sampler.
        samples_per_volume: Patches per subject, unless the subject has a ``num_samples``
            attribute (as in ``tio.Queue``).

    Example:
        >>> patches = SubjectPatches(tio.SubjectsDataset(subjects), tio.UniformSampler(32), 4)  # doctest: +SKIP
        >>> [p[tio.LOCATION] for p in patches[0]]  # D0, H0, W0, D1, H1, W1  # doctest: +SKIP
    """

    def __init__(self, subjects_dataset: tio.SubjectsDataset, sampler: tio.data.PatchSampler,
                 samples_per_volume: int) -> None:
        self.subjects_dataset = subjects_dataset
        self.sampler = sampler
        self.samples_per_volume = samples_per_volume

    def __len__(self) -> int:
        return len(self.subjects_dataset)

    def __getitem__(self, index: int) -> list[tio.Subject]:
        return self.patches(index)

    def patches(self, index: int, generator: torch.Generator | None = None) -> list[tio.Subject]:
        """The patches of subject ``index``.

        Args:
            index: Subject index.
            generator: Random generator of the patch locations when read lazily (threads
                draw from their own); None: the global one, drawn exactly as TorchIO draws.
        """
        subject = self.subjects_dataset.dry_iter()[int(index)]
        num_patches = getattr(subject, NUM_SAMPLES, self.samples_per_volume)
        if not self.reads_lazily():
            return list(self.sampler(self.subjects_dataset[int(index)], num_patches))
        return self._lazy_patches(subject, num_patches, generator)

    def reads_lazily(self) -> bool:
        """True when patches are cut from the readers' arrays without loading subjects."""
        transform = getattr(self.subjects_dataset, '_transform', None)
        generator = getattr(type(self.sampler)._generate_patches, '__func__', type(self.sampler)._generate_patches)
        return (
            transform is None
            and getattr(self.subjects_dataset, 'load_getitem', True)
            and isinstance(self.sampler, (UniformSampler, WeightedSampler))
            and generator in _LAZY_GENERATORS
        )

    def _lazy_patches(self, subject: tio.Subject, num_patches: int,
                      generator: torch.Generator | None) -> list[tio.Subject]:
        volumes = {name: _Volume.of(image) for name, image in subject.get_images_dict(intensity_only=False).items()}
        shapes = {v.shape for v in volumes.values()}
        subject_id = subject.get(ID, '')
        if len(shapes) != 1:
            raise RuntimeError(f'images of subject {subject_id!r} have different spatial'
                               f' shapes {sorted(shapes)}; they must share one grid to be cut into patches')
        shape = np.array(shapes.pop())
        patch_size = self.sampler.patch_size.astype(int)
        if np.any(patch_size > shape):
            raise RuntimeError(f'subject {subject_id!r}: Patch size {tuple(patch_size)} cannot be larger'
                               f' than image size {tuple(shape)}')
        draw = self._location_drawer(subject, volumes, shape, generator)
        patches = []
        for _ in range(num_patches):
            start = tuple(int(i) for i in draw())
            if generator is None:
                # tio.Crop.__call__ draws one number per patch: keep the random stream TorchIO's,
                # so that a seed gives the patches tio.Queue would give.
                torch.rand(1)
            patches.append(_cut(subject, volumes, start, tuple(patch_size), shape))
        return patches

    def _location_drawer(self, subject: tio.Subject, volumes: dict, shape: np.ndarray,
                         generator: torch.Generator | None):
        """A function drawing one patch start (D, H, W) as the TorchIO sampler would."""
        sampler = self.sampler
        if isinstance(sampler, WeightedSampler):
            # TorchIO's own probability map and inverse-CDF sampling, on a one-image subject.
            image = sampler.get_probability_map_image(subject)  # TorchIO's choice and errors; not loaded
            name = next(key for key, value in subject.items() if value is image)
            half = sampler.patch_size.astype(int) // 2
            if generator is not None and isinstance(sampler, LabelSampler) and not sampler.label_probabilities_dict:
                return _binary_label_drawer(sampler, volumes[name].read(), half, generator, image.path)
            one = tio.Subject({name: type(image)(tensor=volumes[name].read(), affine=volumes[name].affine)})
            probability = sampler.process_probability_map(sampler.get_probability_map(one), one)
            cdf = sampler.get_cumulative_distribution_function(probability)
            if generator is None:
                return lambda: sampler.get_random_index_ini(probability, cdf)

            def weighted() -> np.ndarray:  # WeightedSampler.sample_probability_map, own generator
                number = max(MIN_FLOAT_32, torch.rand(1, generator=generator).item()) * cdf[-1]
                return np.array(np.unravel_index(np.searchsorted(cdf, number), probability.shape)) - half

            return weighted
        valid_range = shape - sampler.patch_size.astype(int)
        return lambda: [int(torch.randint(x + 1, (1,), generator=generator).item()) for x in valid_range]


def _binary_label_drawer(sampler: LabelSampler, label: torch.Tensor, half: np.ndarray,
                         generator: torch.Generator, path: Any):
    """``tio.LabelSampler`` without label probabilities: a centre drawn uniformly among the voxels
    of the first channel > 0 away from the borders, the distribution TorchIO's inverse CDF over
    that binary map gives, without its float64 map and cumulative sum (~10x faster)."""
    mask = (label[0] > 0).numpy()
    WeightedSampler.clear_probability_borders(mask, sampler.patch_size)
    candidates = np.flatnonzero(mask)
    if not candidates.size:
        raise RuntimeError(f'Empty probability map found: {path}; voxels with positive probability might be'
                           f' near the image border: try tio.Pad({tuple(int(n) for n in half)})')

    def draw() -> np.ndarray:
        index = candidates[int(torch.randint(candidates.size, (1,), generator=generator).item())]
        return np.array(np.unravel_index(index, mask.shape)) - half

    return draw


class _Volume:
    """An image's voxels as the arrays its reader returns (one per file), read on demand."""

    def __init__(self, image: tio.Image, arrays: Sequence[Any], affine: np.ndarray) -> None:
        self.image = image
        self.arrays = arrays
        self.affine = affine
        self.shape = tuple(int(n) for n in arrays[0].shape[1:])

    @classmethod
    def of(cls, image: tio.Image) -> _Volume:
        if image._loaded:
            return cls(image, [image.data], image.affine)
        paths = image.path if isinstance(image.path, list) else [image.path]
        arrays, affine = [], None
        for path in paths:
            array, file_affine = image.reader(path)
            array = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)  # no copy
            if array.ndim != 4:
                raise ValueError(f'reader of {path} returned a {array.ndim}-D array; expected C x D x H x W')
            arrays.append(array)
            affine = np.asarray(file_affine, dtype=np.float64) if affine is None else affine
        return cls(image, arrays, affine)

    def crop(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> torch.Tensor:
        """A new C x D x H x W tensor of the region (only the region is read from the arrays)."""
        region = (slice(None), *(slice(a, b) for a, b in zip(start, stop)))
        if isinstance(self.arrays[0], torch.Tensor):  # a loaded image
            return self.arrays[0][region].clone()
        parts = [np.asarray(array[region]) for array in self.arrays]
        dtype = np.result_type(*(check_uint_to_int(p[:0]) for p in parts))
        out = _new_tensor((sum(p.shape[0] for p in parts), *parts[0].shape[1:]), dtype)
        view, channel = out.numpy(), 0
        for part in parts:  # files stacked as channels: each region copied once, into place
            view[channel:channel + part.shape[0]] = part
            channel += part.shape[0]
        return out

    def read(self) -> torch.Tensor:
        return self.crop((0, 0, 0), self.shape)


def _new_tensor(shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
    """An uninitialised tensor; in shared memory inside DataLoader workers.

    A worker's tensors travel to the main process through shared memory: allocating them
    there saves the copy ``share_memory_()`` would make when they are sent.
    """
    tensor = torch.from_numpy(np.empty(0, dtype=dtype))
    if get_worker_info() is None or not hasattr(torch.UntypedStorage, '_new_shared'):
        return torch.empty(shape, dtype=tensor.dtype)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * tensor.element_size())
    return tensor.set_(storage, 0, shape)


def _cut(subject: tio.Subject, volumes: dict[str, _Volume], start: tuple, size: tuple, shape) -> tio.Subject:
    """The patch at ``start``, built as ``tio.Crop`` builds it from a loaded subject."""
    stop = tuple(a + n for a, n in zip(start, size))
    patch = subject.__class__.__new__(subject.__class__)
    for key, value in subject.__dict__.items():
        if key in volumes:
            volume = volumes[key]
            affine = volume.affine.copy()
            affine[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
            patch[key] = type(value)(tensor=volume.crop(start, stop), affine=affine, type=value.type, path=value.path)
        else:
            copied = copy.deepcopy(value)
            if key in subject:
                patch[key] = copied
            patch.__dict__[str(key)] = copied
    cropping = tuple(int(v) for a, b, n in zip(start, stop, shape) for v in (a, n - b))
    tio.Crop(cropping)._add_transform_to_subject_history(patch)
    patch[LOCATION] = torch.as_tensor([*start, *stop])
    patch.update_attributes()
    return patch


class PatchQueue(tio.Queue):
    """``tio.Queue`` whose workers cut the patches (no whole volume crosses a process boundary).

    Same arguments, epoch length and queue behaviour as ``tio.Queue``. Use it with
    ``tio.SubjectsLoader(queue, batch_size=..., num_workers=0)``; batches have the same keys,
    affines, ``tio.LOCATION`` and transform history as ``tio.Queue``'s. Without a transform and
    with a uniform, weighted or label sampler, only the patch regions of each volume are copied
    (see :class:`SubjectPatches`), by threads; otherwise each subject is loaded and transformed
    in a worker process that returns its patches. With ``num_workers=0`` and a seed, the
    patches are those ``tio.Queue`` gives; with workers, the same seed gives the same patches
    run after run (not the same as ``tio.Queue``'s, whose workers draw differently).

    Args:
        subjects_dataset: ``tio.SubjectsDataset`` of the subjects.
        max_length: Patches kept in the queue.
        samples_per_volume: Patches drawn from each subject.
        sampler: A ``tio.data.PatchSampler``.
        subject_sampler: A ``torch.utils.data.Sampler`` over subjects (e.g. distributed).
        num_workers: Workers cutting patches (0: in the calling thread).
        shuffle_subjects: Shuffle the subjects each epoch.
        shuffle_patches: Shuffle the patches in the queue.
        start_background: Start the workers now.
        verbose: Print debugging messages.
        threads: Workers are threads (True) or processes (False, persistent across epochs).
            None: threads when the patches are read lazily, processes otherwise.

    Example:
        >>> queue = PatchQueue(tio.SubjectsDataset(subjects), 64, 8, tio.UniformSampler(96),
        ...                    num_workers=2)  # doctest: +SKIP
        >>> batch = next(iter(tio.SubjectsLoader(queue, batch_size=4)))  # doctest: +SKIP
    """

    def __init__(
        self,
        subjects_dataset: tio.SubjectsDataset,
        max_length: int,
        samples_per_volume: int,
        sampler: tio.data.PatchSampler,
        subject_sampler: Sampler | None = None,
        num_workers: int = 0,
        shuffle_subjects: bool = True,
        shuffle_patches: bool = True,
        start_background: bool = True,
        verbose: bool = False,
        threads: bool | None = None,
    ) -> None:
        self._leftover: list[tio.Subject] = []
        self._patches = SubjectPatches(subjects_dataset, sampler, samples_per_volume)
        self.threads = self._patches.reads_lazily() if threads is None else threads
        self._loader = self._executor = None
        super().__init__(
            subjects_dataset, max_length, samples_per_volume, sampler, subject_sampler=subject_sampler,
            num_workers=num_workers, shuffle_subjects=shuffle_subjects, shuffle_patches=shuffle_patches,
            start_background=start_background, verbose=verbose,
        )

    def _get_subjects_iterable(self):
        self._num_sampled_subjects = 0
        if self.threads and self.num_workers > 0:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.num_workers, thread_name_prefix='pyable-tio-patches')
            return _Prefetch(self._executor, self._patches, self._subject_order(), 2 * self.num_workers)
        # One loader for every epoch: its workers persist, so what they remember (the cache's
        # verified entries, source digests) serves every epoch instead of the first one.
        if self._loader is None:
            self._print(f'\nCreating patch workers: {self.num_workers}')
            self._loader = DataLoader(
                self._patches,
                num_workers=self.num_workers,
                batch_size=1,
                collate_fn=self._get_first_item,
                sampler=self.subject_sampler,
                shuffle=self.shuffle_subjects,
                persistent_workers=self.num_workers > 0,
            )
        return iter(self._loader)

    def _fill(self) -> None:
        # tio.Queue._fill, with a subject's patches (already cut) in place of the subject; a
        # subject with more patches than max_length spreads over several fills.
        self.patches_list.extend(self._leftover[:self.max_length])
        self._leftover = self._leftover[self.max_length:]
        while len(self.patches_list) < self.max_length:
            patches = self._get_next_subject()
            free = self.max_length - len(self.patches_list)
            self.patches_list.extend(patches[:free])
            self._leftover = patches[free:]
            self._num_sampled_subjects += 1
            if self._num_sampled_subjects >= self.num_subjects:
                break
        if self.shuffle_patches:
            self._shuffle_patches_list()

    def _subject_order(self) -> list[int]:
        """This epoch's subject indices, as the process loader's sampler would give them."""
        if self.subject_sampler is not None:
            return [int(i) for i in self.subject_sampler]
        if self.shuffle_subjects:
            return torch.randperm(len(self.subjects_dataset)).tolist()
        return list(range(len(self.subjects_dataset)))


class _Prefetch:
    """Iterator over the subjects' patch lists, cut ahead by a thread pool, in order."""

    def __init__(self, executor: ThreadPoolExecutor, patches: SubjectPatches, order: list[int], depth: int) -> None:
        self._submit = lambda index: executor.submit(patches.patches, index, _generator())
        self._order = iter(order)
        self._pending: deque[Future] = deque()
        for index in islice(self._order, depth):
            self._pending.append(self._submit(index))

    def __iter__(self) -> _Prefetch:
        return self

    def __next__(self) -> list[tio.Subject]:
        if not self._pending:
            raise StopIteration
        future = self._pending.popleft()
        for index in islice(self._order, 1):
            self._pending.append(self._submit(index))
        return future.result()


def _generator() -> torch.Generator:
    """A generator seeded from the global one: threads draw reproducibly under torch.manual_seed."""
    return torch.Generator().manual_seed(int(torch.randint(2**62, (1,)).item()))
