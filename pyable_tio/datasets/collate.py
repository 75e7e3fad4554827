"""Batching ``PyableDataset`` items whose volumes differ in shape and in numbers of ROIs.

Two behaviours, selected by ``pad``: pad every volume to the largest of the batch (with a
documented value and a mask of the valid region), or keep per-item lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import default_collate

from ..constants import ID, IMAGE_PAD_VALUE, ITEM_IMAGES, ITEM_LABELMAPS, ITEM_ROIS, LABEL_PAD_VALUE, MASK, META, PRESENT_SUFFIX, SPATIAL_SHAPES

_LIST_KEYS = (ID, META)


@dataclass(frozen=True)
class PadCollate:
    """``collate_fn`` for ``DataLoader``\\ s over :class:`pyable_tio.PyableDataset` items.

    With ``pad=True`` (default) the batch is::

        {
            "id": [str] * B,
            "images": B x C x D x H x W tensor, padded with ``image_value``,
            "mask": B x 1 x D x H x W bool tensor, True where an item has voxels,
            "spatial_shapes": B x 3 int64 tensor, each item's own (D, H, W),
            "rois": B x R x D x H x W tensor (R = most ROIs of an item), padded with ``label_value``,
            "rois_present": B x R bool tensor, True for the ROIs an item really lists,
            "labelmaps": B x L x D x H x W tensor and "labelmaps_present": B x L, likewise,
            "meta": [dict] * B,
            <extra field>: ``default_collate`` of the values (e.g. a B tensor), else a list,
        }

    Padding is added at the end of each axis (high Z,Y,X indices), so voxel index ``(k, j, i)``
    of a padded tensor is voxel ``(k, j, i)`` of the item and each item's ``meta`` (origin,
    affine) still describes it. Items with ``stack_channels=False`` lists are stacked into
    the C axis. ROI/label dtypes are promoted to a common one (e.g. uint8 and int16 give
    int16).

    With ``pad=False`` every key is a list of the items' values (``images`` a list of
    C x D x H x W tensors or of lists, ``rois``/``labelmaps`` lists of lists), except extra
    fields, which are ``default_collate``\\ d when possible.

    The object is a frozen dataclass of plain values, so it pickles into ``DataLoader``
    workers (``num_workers > 0``, ``persistent_workers=True``) and its tensors can be pinned
    (``pin_memory=True``).

    Args:
        pad: Pad to the largest item (True) or return lists (False).
        image_value: Value of padded image voxels.
        label_value: Value of padded ROI/label voxels and of missing ROIs/label maps.

    Raises:
        ValueError: (when called) an empty batch, or items with different numbers of image
            channels in pad mode (naming the items).

    Example:
        >>> loader = DataLoader(PyableDataset('manifest.json'), batch_size=2,
        ...                     collate_fn=PadCollate(image_value=-1.0))  # doctest: +SKIP
        >>> batch = next(iter(loader))  # doctest: +SKIP
        >>> batch['images'].shape, batch['mask'].shape  # doctest: +SKIP
        (torch.Size([2, 2, 32, 40, 48]), torch.Size([2, 1, 32, 40, 48]))
    """

    pad: bool = True
    image_value: float = IMAGE_PAD_VALUE
    label_value: int = LABEL_PAD_VALUE

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Collate a list of item dicts into one batch dict (see the class docstring)."""
        if len(batch) == 0:
            raise ValueError('cannot collate an empty batch')
        keys = list(dict.fromkeys(key for item in batch for key in item))
        result: dict[str, Any] = {}
        if self.pad:
            result.update(self._padded(batch))
        for key in keys:
            if key in result:
                continue
            values = [item.get(key) for item in batch]
            if key in _LIST_KEYS or key in (ITEM_IMAGES, ITEM_ROIS, ITEM_LABELMAPS):
                result[key] = values
            else:
                result[key] = _default_or_list(values)
        return result

    def _padded(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        ids = [item.get(ID, str(i)) for i, item in enumerate(batch)]
        images = [_as_channels(item[ITEM_IMAGES]) for item in batch]
        channels = {name: image.shape[0] for name, image in zip(ids, images)}
        if len(set(channels.values())) > 1:
            raise ValueError(
                f'items have different numbers of image channels {channels}: a padded batch stacks'
                ' them; use pad=False, or PyableDataset(..., missing="error") to find such'
                ' subjects before training'
            )
        shapes = [tuple(image.shape[1:]) for image in images]
        labels = {key: [list(item.get(key, [])) for item in batch] for key in (ITEM_ROIS, ITEM_LABELMAPS)}
        every_shape = shapes + [tuple(t.shape) for lists in labels.values() for entries in lists for t in entries]
        target = tuple(max(shape[axis] for shape in every_shape) for axis in range(3))
        dtype = _promote([image.dtype for image in images])
        result: dict[str, Any] = {
            ITEM_IMAGES: torch.stack([_pad(image, target, self.image_value, dtype) for image in images]),
            MASK: torch.stack([_pad(torch.ones(1, *shape, dtype=torch.bool), target, False) for shape in shapes]),
            SPATIAL_SHAPES: torch.tensor(shapes, dtype=torch.int64),
        }
        for key, lists in labels.items():
            tensor, present = self._stack_labels(lists, target)
            result[key] = tensor
            result[key + PRESENT_SUFFIX] = present
        return result

    def _stack_labels(
        self, lists: list[list[torch.Tensor]], target: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        count = max(len(entries) for entries in lists)
        dtype = _promote([t.dtype for entries in lists for t in entries], default=torch.uint8)
        tensor = torch.full((len(lists), count, *target), self.label_value, dtype=dtype)
        present = torch.zeros(len(lists), count, dtype=torch.bool)
        for b, entries in enumerate(lists):
            for r, entry in enumerate(entries):
                d, h, w = entry.shape
                tensor[b, r, :d, :h, :w] = entry
                present[b, r] = True
        return tensor, present


def collate(
    batch: Sequence[Mapping[str, Any]],
    pad: bool = True,
    image_value: float = IMAGE_PAD_VALUE,
    label_value: int = LABEL_PAD_VALUE,
) -> dict[str, Any]:
    """Collate :class:`pyable_tio.PyableDataset` items; ``collate_fn=pt.collate`` pads.

    Same as ``PadCollate(pad, image_value, label_value)(batch)``; use
    :class:`PadCollate` (or ``functools.partial``) to choose options in a ``DataLoader``.

    Args:
        batch: Item dicts.
        pad: Pad to the largest item with a valid-region ``mask`` (True) or return lists.
        image_value: Value of padded image voxels (default 0.0).
        label_value: Value of padded ROI/label voxels (default 0).

    Returns:
        The batch dict described in :class:`PadCollate`.

    Raises:
        ValueError: an empty batch, or different numbers of image channels when padding.

    Example:
        >>> loader = DataLoader(PyableDataset('manifest.json'), batch_size=2, collate_fn=collate)  # doctest: +SKIP
        >>> next(iter(loader))['mask'].shape  # B x 1 x D x H x W  # doctest: +SKIP
    """
    return PadCollate(pad, image_value, label_value)(batch)


def _as_channels(images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """C x D x H x W from a stacked tensor or a list of D x H x W channels."""
    if isinstance(images, torch.Tensor):
        return images
    return torch.stack(list(images))


def _pad(
    tensor: torch.Tensor, target: tuple[int, ...], value: float | bool, dtype: torch.dtype | None = None
) -> torch.Tensor:
    out = torch.full((tensor.shape[0], *target), value, dtype=dtype or tensor.dtype)
    d, h, w = tensor.shape[1:]
    out[:, :d, :h, :w] = tensor
    return out


def _promote(dtypes: Sequence[torch.dtype], default: torch.dtype = torch.float32) -> torch.dtype:
    if not dtypes:
        return default
    result = dtypes[0]
    for dtype in dtypes[1:]:
        result = torch.promote_types(result, dtype)
    return result


def _default_or_list(values: list[Any]) -> Any:
    if any(value is None for value in values):
        return values
    try:
        return default_collate(values)
    except (TypeError, RuntimeError):
        return values
