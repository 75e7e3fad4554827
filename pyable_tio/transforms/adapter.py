"""The seed's callable contract, one implementation for ``CallableTransform`` and ``PyableDataset``.

A seed-style function is called ``function(images, rois, labelmaps, meta)`` with

- ``images``: one C x D x H x W ``torch.Tensor`` (every intensity channel, Z,Y,X);
- ``rois``, ``labelmaps``: lists of D x H x W tensors (integer types kept);
- ``meta``: the item's meta dict (x,y,z ``spacing``/``origin``/``direction``/``size`` of these
  tensors, their Z,Y,X ``affine``, ``axis_order``, ``source_paths``, ...),

and returns ``(images, rois, labelmaps)`` or ``(images, rois, labelmaps, meta)``: tensors or numpy
arrays of the same shapes and counts. Which way a callable is used never depends on its
signature: in :class:`pyable_tio.transforms.Compose` and ``PyableDataset(transforms=...)`` every
callable that is not a ``tio.Transform`` is a seed-style function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchio as tio

from ..constants import CHANGES_LABELS_ATTRIBUTE, ID, IMAGE_PREFIX, IMAGES, LABELMAP_PREFIX, META, META_AXIS_ORDER, ROI_PREFIX
from ..errors import describe
from ..geometry.grid import Grid, grid_from_meta, planar_grid, ras_affine_to_grid
from ..plan import reference_grid
from .layout import ToZYX, is_zyx

#: ``function(images, rois, labelmaps, meta) -> (images, rois, labelmaps[, meta])``.
SeedFunction = Callable[[torch.Tensor, list, list, dict], Sequence[Any]]

#: Meta keys that always describe the tensors: a function's returned meta cannot change them.
GEOMETRY_KEYS = ('axis_order', 'spacing', 'origin', 'direction', 'size', 'orientation', 'affine')


class CallableTransform(tio.Transform):
    """A TorchIO transform that calls a seed-style ``function(images, rois, labelmaps, meta)``.

    The function receives ``images`` as one C x D x H x W tensor (the channels of ``images``
    first, then ``image_0``, ``image_1``, ...), ``rois`` and ``labelmaps`` as lists of D x H x W
    tensors (``roi_0``, ... and ``labelmap_0``, ...) and the item's ``meta`` (as
    :class:`pyable_tio.PyableDataset` gives it). It returns ``(images, rois, labelmaps)`` or
    ``(images, rois, labelmaps, meta)``: tensors (or arrays) of the same shapes and counts. The
    results replace the subject's tensors (each in its own dtype); the affine is kept; a returned
    ``meta`` updates ``subject['meta']`` except the geometry keys. It is recorded in the
    subject's history like any TorchIO transform.

    Args:
        function: The seed-style callable. It must be picklable to run in DataLoader workers
            (a module-level function, not a lambda).
        changes_labels: The function changes label values on purpose (relabels, merges
            classes): new integer values in ROIs/label maps are kept. Default: the function's
            own ``changes_labels`` attribute (set by :func:`changes_labels`), else False: new
            values are refused as interpolation.
        **kwargs: See ``tio.Transform``.

    Raises:
        TypeError: the function does not return a tuple of 3 or 4 items.
        ValueError: lists of other lengths, tensors of another shape, or a ROI/label map with
            values it did not have (labels must be moved, never interpolated); messages name
            the subject and the key.

    Example:
        >>> def swap_lr(images, rois, labelmaps, meta):
        ...     flip = lambda tensors: [torch.flip(t, (-1,)) for t in tensors]  # W = x
        ...     return torch.flip(images, (-1,)), flip(rois), flip(labelmaps)
        >>> transform = CallableTransform(swap_lr)
        >>> flipped = transform(subject)  # doctest: +SKIP
    """

    def __init__(self, function: SeedFunction, changes_labels: bool | None = None, **kwargs):
        super().__init__(**kwargs)
        if not callable(function):
            raise TypeError(f'function must be callable, got {type(function).__name__}')
        self.function = function
        self.changes_labels = declares_label_changes(function) if changes_labels is None else bool(changes_labels)
        self.args_names = ['function', 'changes_labels']

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        reference = reference_grid(subject)
        if reference is not None and not is_zyx(subject):
            subject = ToZYX()(subject)  # after e.g. tio.ToCanonical: the function is promised D, H, W
        image_keys = ([IMAGES] if IMAGES in subject else []) + _numbered(subject, IMAGE_PREFIX)
        roi_keys, labelmap_keys = _numbered(subject, ROI_PREFIX), _numbered(subject, LABELMAP_PREFIX)
        images = [subject[key].data for key in image_keys]
        stacked = torch.cat(images) if len(images) > 1 else images[0] if images else torch.zeros(0)
        meta = dict(subject.get(META) or {})
        if images and reference is not None:
            meta = item_meta(meta, subject[image_keys[0]], reference)
        images_out, rois, labelmaps, new_meta = call_seed_function(
            self.function, stacked, [subject[k].data[0] for k in roi_keys],
            [subject[k].data[0] for k in labelmap_keys], meta, subject.get(ID), image_keys[0] if images else IMAGES,
            changes_labels=self.changes_labels,
        )
        start = 0
        for key, data in zip(image_keys, images):
            subject[key].set_data(images_out[start:start + data.shape[0]].to(data.dtype).contiguous())
            start += data.shape[0]
        for keys, outputs in ((roi_keys, rois), (labelmap_keys, labelmaps)):
            for key, output in zip(keys, outputs):
                subject[key].set_data(output[np.newaxis].contiguous())
        if new_meta is not None and META in subject:
            updates = {k: v for k, v in new_meta.items() if k not in GEOMETRY_KEYS}
            subject[META] = {**subject[META], **updates}
        return subject


def call_seed_function(
    function: SeedFunction,
    images: torch.Tensor,
    rois: list[torch.Tensor],
    labelmaps: list[torch.Tensor],
    meta: dict[str, Any],
    subject_id: str | None,
    images_key: str = IMAGES,
    changes_labels: bool | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], dict[str, Any] | None]:
    """Call ``function`` with the seed's arguments and check what it returns.

    Args:
        function: The seed-style callable.
        images: C x D x H x W tensor.
        rois: D x H x W tensors.
        labelmaps: D x H x W tensors.
        meta: The item's meta dict.
        subject_id: Named in errors.
        images_key: Named in errors about the images.
        changes_labels: New integer values in ROIs/label maps are deliberate (kept); None:
            the function's declaration (:func:`declares_label_changes`).

    Returns:
        ``(images, rois, labelmaps, meta)`` as tensors (label maps and ROIs in their input
        dtypes, or a wider integer type for relabelled values that do not fit); ``meta`` is
        None when the function returned three items.

    Raises:
        TypeError: not a tuple/list of 3 or 4 items, or a 4th item that is not a dict.
        ValueError: other counts or shapes, new values in a ROI/label map (unless the function
            changes labels), or non-integer values in one.

    Example:
        >>> out = call_seed_function(lambda i, r, l, m: (i * 2, r, l), torch.ones(1, 2, 3, 4), [], [], {}, 's')
        >>> out[0].sum().item(), out[3]
        (48.0, None)
    """
    name = f'transform {getattr(function, "__name__", type(function).__name__)}'
    relabels = declares_label_changes(function) if changes_labels is None else changes_labels
    result = function(images, rois, labelmaps, meta)
    if not isinstance(result, (tuple, list)) or len(result) not in (3, 4):
        got = f'{len(result)} items' if isinstance(result, (tuple, list)) else type(result).__name__
        problem = f'must return (images, rois, labelmaps) or (images, rois, labelmaps, meta), got {got}'
        raise TypeError(describe(subject_id, name, problem))
    new_meta = result[3] if len(result) == 4 else None
    if new_meta is not None and not isinstance(new_meta, dict):
        raise TypeError(describe(subject_id, name, f'the returned meta must be a dict, got {type(new_meta).__name__}'))
    images_out = _tensor(result[0])
    if tuple(images_out.shape) != tuple(images.shape):
        problem = (
            f'returned images of shape {tuple(images_out.shape)}, expected {tuple(images.shape)} (C, D, H, W);'
            ' change geometry with TorchIO spatial transforms'
        )
        raise ValueError(describe(subject_id, f'{name}: "{images_key}"', problem))
    if not images_out.is_floating_point() and images.is_floating_point():
        images_out = images_out.to(images.dtype)
    outputs = []
    for group, prefix, before_list, after_list in (
        ('rois', ROI_PREFIX, rois, result[1]), ('labelmaps', LABELMAP_PREFIX, labelmaps, result[2]),
    ):
        after_list = list(after_list)
        if len(after_list) != len(before_list):
            problem = f'returned {len(after_list)} {group}, expected {len(before_list)}'
            raise ValueError(describe(subject_id, name, problem))
        checked = []
        for i, (before, after) in enumerate(zip(before_list, after_list)):
            after = _tensor(after)
            where = f'{name}: "{prefix}{i}"'
            if tuple(after.shape) != tuple(before.shape):
                problem = f'returned shape {tuple(after.shape)}, expected {tuple(before.shape)} (D, H, W)'
                raise ValueError(describe(subject_id, where, problem))
            checked.append(_checked_labels(before, after, relabels, subject_id, where))
        outputs.append(checked)
    return images_out, outputs[0], outputs[1], new_meta


def _checked_labels(
    before: torch.Tensor, after: torch.Tensor, relabels: bool, subject_id: str | None, where: str
) -> torch.Tensor:
    """``after`` in ``before``'s dtype, when it holds no new values (or only deliberate integer ones)."""
    extra = set(torch.unique(after).tolist()) - set(torch.unique(before).tolist())
    if extra and not relabels:
        problem = (
            f'new values {sorted(extra)[:5]} in a label map: labels must not be interpolated (a function'
            ' that relabels on purpose declares it: pyable_tio.transforms.changes_labels)'
        )
        raise ValueError(describe(subject_id, where, problem))
    if not extra:
        return after.to(before.dtype)
    if after.is_floating_point() and not bool(torch.equal(after, after.round())):
        problem = 'non-integer values in a label map (a function that changes labels must keep them integers)'
        raise ValueError(describe(subject_id, where, problem))
    low, high = int(after.min()), int(after.max())
    for dtype in (before.dtype, torch.int16, torch.int32, torch.int64):
        if not dtype.is_floating_point and torch.iinfo(dtype).min <= low and high <= torch.iinfo(dtype).max:
            return after.to(dtype)  # the input's type when the new labels fit, else a wider one
    return after.to(torch.int64)


def changes_labels(function: SeedFunction) -> SeedFunction:
    """Declare that a seed-style callable changes label values on purpose (relabels, merges classes).

    Its new integer values in ROIs/label maps are then kept, where an undeclared callable's are
    refused as interpolation. Sets the function's ``changes_labels`` attribute (a callable
    object may also have ``changes_labels = True`` as a class attribute), so it stays picklable.

    Example:
        >>> @changes_labels
        ... def merge_3_into_5(images, rois, labelmaps, meta):
        ...     return images, rois, [torch.where(l == 3, 5, l) for l in labelmaps]
        >>> declares_label_changes(merge_3_into_5)
        True
    """
    setattr(function, CHANGES_LABELS_ATTRIBUTE, True)
    return function


def declares_label_changes(function: Any) -> bool:
    """Whether ``function`` declares that it changes label values (:func:`changes_labels`).

    Example:
        >>> declares_label_changes(lambda images, rois, labelmaps, meta: (images, rois, labelmaps))
        False
    """
    return getattr(function, CHANGES_LABELS_ATTRIBUTE, False) is True


def item_meta(subject_meta: dict[str, Any], image: tio.Image, reference: Grid | None = None) -> dict[str, Any]:
    """The subject's meta, with geometry that describes ``image``'s (possibly transformed) tensor.

    Args:
        subject_meta: ``subject['meta']``.
        image: The image whose tensor the item holds.
        reference: The subject's reference grid (:func:`pyable_tio.plan.reference_grid`);
            None: the grid ``subject_meta`` describes (a subject assembled by hand).

    Raises:
        ValueError: ``subject_meta`` has no reference grid.

    Example:
        >>> item_meta(subject['meta'], subject['images'])['axis_order']  # doctest: +SKIP
        'xyz'
    """
    meta = dict(subject_meta)
    reference = grid_from_meta(meta) if reference is None else reference
    if reference is None:
        raise ValueError('subject meta has no reference grid (size, spacing, origin, direction)')
    affine = np.asarray(image.affine, dtype=float)
    shape = tuple(int(n) for n in image.data.shape[1:])
    same = shape == reference.shape_zyx and np.allclose(affine, reference.affine_zyx(), atol=1e-6)
    grid = reference if same else _grid_of(affine, shape, reference.dimension)
    # Grid fields are already tuples of floats (size: ints), in x,y,z order.
    meta.update(
        axis_order=META_AXIS_ORDER,
        spacing=grid.spacing,
        origin=grid.origin,
        direction=grid.direction,
        size=grid.size,
        orientation=grid.orientation(),
        affine=affine.tolist(),
    )
    return meta


def _grid_of(affine_zyx: np.ndarray, shape_zyx: tuple[int, int, int], dimension: int) -> Grid:
    grid = ras_affine_to_grid(affine_zyx, shape_zyx)
    # A 2-D subject that stayed one slice in its plane is described in 2-D, like its files.
    planar = planar_grid(grid) if dimension == 2 else None
    return grid if planar is None else planar


def _tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):  # a list of D x H x W channels
        return torch.stack([_tensor(v) for v in value]) if value else torch.zeros(0)
    return torch.as_tensor(np.ascontiguousarray(value))


def _numbered(subject: tio.Subject, prefix: str) -> list[str]:
    pattern = re.compile(re.escape(prefix) + r'(\d+)$')
    keys = [key for key in subject if isinstance(key, str) and pattern.match(key)]
    return sorted(keys, key=lambda key: int(pattern.match(key).group(1)))
