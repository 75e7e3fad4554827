"""Wrap a callable of the seed's signature into a TorchIO transform."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchio as tio

from ..constants import ID, IMAGE_PREFIX, IMAGES, LABELMAP_PREFIX, META, ROI_PREFIX
from ..errors import describe

#: ``function(images, rois, labelmaps, meta) -> (images, rois, labelmaps)``; arrays are D x H x W.
SeedFunction = Callable[[list, list, list, dict], Sequence[Sequence[Any]]]


class CallableTransform(tio.Transform):
    """A TorchIO transform that calls ``function(images, rois, labelmaps, meta)``.

    The function receives lists of numpy arrays, each D x H x W (Z,Y,X): one per intensity
    channel (the channels of ``images`` first, then ``image_0``, ``image_1``, ...), one per ROI
    (``roi_0``, ...) and one per label map (``labelmap_0``, ...), plus a copy of ``subject['meta']``.
    It returns ``(images, rois, labelmaps)``: lists of the same lengths, arrays (or tensors) of
    the same shape. The results replace the subject's tensors; the affine is kept. It is recorded
    in the subject's history like any TorchIO transform.

    Args:
        function: The seed-style callable. It must be picklable to run in DataLoader workers
            (a module-level function, not a lambda).
        **kwargs: See ``tio.Transform``.

    Raises:
        ValueError: the function returns lists of other lengths or arrays of another shape, or a
            ROI/label map with values it did not have (labels must be moved, never interpolated);
            messages name the subject and the key.

    Example:
        >>> def swap_lr(images, rois, labelmaps, meta):
        ...     flip = lambda arrays: [a[:, :, ::-1] for a in arrays]
        ...     return flip(images), flip(rois), flip(labelmaps)
        >>> transform = CallableTransform(swap_lr)
        >>> flipped = transform(subject)  # doctest: +SKIP
    """

    def __init__(self, function: SeedFunction, **kwargs):
        super().__init__(**kwargs)
        if not callable(function):
            raise TypeError(f'function must be callable, got {type(function).__name__}')
        self.function = function
        self.args_names = ['function']

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        groups = {
            'images': _image_channels(subject),
            'rois': [(key, None) for key in _numbered(subject, ROI_PREFIX)],
            'labelmaps': [(key, None) for key in _numbered(subject, LABELMAP_PREFIX)],
        }
        inputs = {
            group: [_array(subject[key], channel) for key, channel in slots] for group, slots in groups.items()
        }
        meta = dict(subject.get(META) or {})
        result = self.function(inputs['images'], inputs['rois'], inputs['labelmaps'], meta)
        subject_id = subject.get(ID)
        if not isinstance(result, (tuple, list)) or len(result) != 3:
            raise ValueError(describe(subject_id, _name(self.function), 'must return (images, rois, labelmaps)'))
        new_channels: dict[str, dict[int | None, torch.Tensor]] = {}
        for (group, slots), outputs in zip(groups.items(), result):
            outputs = list(outputs)
            if len(outputs) != len(slots):
                problem = f'returned {len(outputs)} {group}, expected {len(slots)}'
                raise ValueError(describe(subject_id, _name(self.function), problem))
            for (key, channel), before, after in zip(slots, inputs[group], outputs):
                after = np.asarray(after.detach().cpu() if isinstance(after, torch.Tensor) else after)
                where = f'{_name(self.function)}: "{key}"' + ('' if channel is None else f' channel {channel}')
                if after.shape != before.shape:
                    problem = (
                        f'returned shape {after.shape}, expected {before.shape} (D, H, W);'
                        ' change geometry with TorchIO spatial transforms'
                    )
                    raise ValueError(describe(subject_id, where, problem))
                if group != 'images':
                    extra = set(np.unique(after).tolist()) - set(np.unique(before).tolist())
                    if extra:
                        problem = f'new values {sorted(extra)[:5]} in a label map: labels must not be interpolated'
                        raise ValueError(describe(subject_id, where, problem))
                    after = after.astype(before.dtype, copy=False)
                new_channels.setdefault(key, {})[channel] = torch.as_tensor(np.ascontiguousarray(after))
        for key, channels in new_channels.items():
            image = subject[key]
            if None in channels:
                image.set_data(channels[None][np.newaxis])
            else:
                image.set_data(torch.stack([channels[c] for c in range(len(channels))]))
        return subject


def _image_channels(subject: tio.Subject) -> list[tuple[str, int]]:
    keys = ([IMAGES] if IMAGES in subject else []) + _numbered(subject, IMAGE_PREFIX)
    return [(key, c) for key in keys for c in range(subject[key].data.shape[0])]


def _numbered(subject: tio.Subject, prefix: str) -> list[str]:
    pattern = re.compile(re.escape(prefix) + r'(\d+)$')
    keys = [key for key in subject if isinstance(key, str) and pattern.match(key)]
    return sorted(keys, key=lambda key: int(pattern.match(key).group(1)))


def _array(image: tio.Image, channel: int | None) -> np.ndarray:
    data = image.data.numpy()
    return (data[0] if channel is None else data[channel]).copy()


def _name(function: Any) -> str:
    return f'transform {getattr(function, "__name__", type(function).__name__)}'
