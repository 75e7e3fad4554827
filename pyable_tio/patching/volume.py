"""The box reader: an image's voxels as its reader's arrays, of which only a region is read.

A :class:`Volume` wraps the arrays an image's reader returns (one per file, stacked as
channels): memory maps of the volume cache, arrays of any other reader, or the tensor of a
loaded image. Patches read only their box from it, in the stored dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchio as tio
from torch.utils.data import get_worker_info
from torchio.constants import INTENSITY, TYPE
from torchio.data.io import check_uint_to_int


def is_label(image: tio.Image) -> bool:
    """True for label maps and ROIs (sampled nearest, keeping their dtype)."""
    return image[TYPE] != INTENSITY


@dataclass
class Box:
    """A region of arrays, not read yet: what a resampling engine may read for one patch.

    Attributes:
        arrays: One C_f x D x H x W array per file (memory maps, or one augmented box).
        origin: Volume voxel index (D, H, W) of the arrays' first voxel.
        start: First voxel of the region (volume index).
        stop: One past its last voxel (volume index).
    """

    arrays: list[np.ndarray]
    origin: np.ndarray
    start: np.ndarray
    stop: np.ndarray

    def views(self) -> list[np.ndarray]:
        """Each file's region as a view of its array (of a memory map: nothing read yet)."""
        region = (slice(None), *(slice(int(a), int(b)) for a, b in zip(self.start - self.origin, self.stop - self.origin)))
        return [array[region] for array in self.arrays]


class Volume:
    """An image's voxels as the arrays its reader returns (one per file), read on demand."""

    def __init__(self, image: tio.Image, arrays: Sequence[Any], affine: np.ndarray) -> None:
        self.image = image
        self.arrays = arrays
        self.affine = affine
        self.shape = tuple(int(n) for n in arrays[0].shape[1:])
        self.channels = sum(int(array.shape[0]) for array in arrays)
        self.statistics: dict[str, Any] = {}  # whole-volume statistics of a loaded volume (patching.augment)
        self._contiguous: list[np.ndarray] | None = None

    @classmethod
    def of(cls, image: tio.Image) -> Volume:
        """The volume of ``image``: its data when loaded, else its reader's arrays (not read yet)."""
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
        out = _new_tensor((sum(p.shape[0] for p in parts), *parts[0].shape[1:]), self.patch_dtype())
        view, channel = out.numpy(), 0
        for part in parts:  # files stacked as channels: each region copied once, into place
            view[channel:channel + part.shape[0]] = part
            channel += part.shape[0]
        return out

    def box(self, start: Sequence[int], stop: Sequence[int]) -> Box:
        """The region from ``start`` to ``stop`` (D, H, W), not read yet."""
        if self._contiguous is None:
            # The engines index the arrays flat: memory maps are contiguous already; a loaded,
            # transformed tensor may not be, and is then copied once per volume, not per patch.
            self._contiguous = [np.ascontiguousarray(a.numpy() if isinstance(a, torch.Tensor) else a)
                                for a in self.arrays]
        arrays = self._contiguous
        return Box(arrays, np.zeros(3, dtype=int), np.asarray(start, dtype=int), np.asarray(stop, dtype=int))

    def affine_at(self, start: Sequence[int]) -> np.ndarray:
        """The affine of the grid whose first voxel is voxel ``start`` (D, H, W) of this one (a patch's, a box's)."""
        moved = np.array(self.affine, dtype=np.float64)
        moved[:3, 3] = moved[:3, :3] @ np.asarray(start, dtype=np.float64) + moved[:3, 3]
        return moved

    @property
    def label(self) -> bool:
        """True when the image is a label map or ROI (:func:`is_label`)."""
        return is_label(self.image)

    def patch_dtype(self) -> np.dtype:
        """The dtype of :meth:`crop`'s tensors (unsigned types torch lacks widened, as TorchIO reads them)."""
        if isinstance(self.arrays[0], torch.Tensor):
            return self.arrays[0].numpy()[:0].dtype
        return np.result_type(*(check_uint_to_int(np.asarray(a)[:0]) for a in self.arrays))

    def read(self) -> torch.Tensor:
        """The whole C x D x H x W volume (a new tensor)."""
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
