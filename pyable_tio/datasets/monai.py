"""MONAI datasets over pyable-tio subjects: the same manifests, readers and cache, MONAI's items.

:func:`monai_dataset` is a drop-in for MONAI's ``LoadImaged`` + ``EnsureChannelFirstd`` +
``ResampleToMatchd`` (+ ``PersistentDataset``): each item is a dict whose images, ROIs and
label maps are ``monai.data.MetaTensor`` objects on the subject's reference grid, read by the
subject's :class:`~pyable_tio.GridReader` (one interpolation per file, labels nearest, the
content-keyed ``.npy`` cache, memory-mapped, no pickle). Every MONAI dictionary transform
then applies as it does after ``LoadImaged``.

Axis order: tensors are C x D x H x W in **Z,Y,X** order (MONAI's ``LoadImaged`` gives
C x I x J x K, i.e. x,y,z). The ``MetaTensor.affine`` maps (d, h, w) indices to RAS millimetres,
as MONAI's affines do, so affine-driven transforms (``Spacingd``, ``Orientationd``,
``Invertd``...) are physically the same as on MONAI's own items, while per-axis parameters
(``spatial_axis=``, ``pixdim=``, ``roi_size=``, ``rotate_range=``) read as
(D, H, W) = (z, y, x): ``RandFlipd(spatial_axis=0)`` flips along z here, along x after
``LoadImaged``.

MONAI is optional (``pip install "pyable-tio[monai]"``) and imported only when used.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchio as tio
from torch.utils.data._utils.collate import default_collate_fn_map

from ..constants import META
from ..manifest import ManifestSource
from ..subjects import subjects_from_manifest

#: What ``pip`` installs to make :func:`monai_dataset` work.
MONAI_EXTRA = 'pip install "pyable-tio[monai]"'
#: ``MetaTensor.meta["space"]``: our affines map indices to RAS millimetres, as MONAI's do.
MONAI_SPACE = 'RAS'


def require_monai() -> Any:
    """Import and return ``monai``, or raise an ``ImportError`` that says how to install it.

    Example:
        >>> monai = require_monai()  # doctest: +SKIP
    """
    try:
        import monai
        import monai.data  # noqa: F401  (the submodules used here)
        import monai.transforms  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f'pyable_tio.monai_dataset needs MONAI, which is not installed ({error}); {MONAI_EXTRA}'
        ) from None
    return monai


class SubjectMeta(dict):
    """A subject's ``meta`` dict in a MONAI item; batches keep one dict per item.

    Subjects differ in the lengths of ``meta`` lists (``source_paths``, ``transforms_applied``),
    which ``default_collate`` refuses; a batch (``list_data_collate``, MONAI's or torch's
    ``DataLoader``) holds the list of the items' dicts instead, like :func:`pyable_tio.datasets.collate`.

    Example:
        >>> batch = monai.data.list_data_collate([item_a, item_b])  # doctest: +SKIP
        >>> [m['reference_used'] for m in batch['meta']]  # doctest: +SKIP
    """


def _collate_meta(batch: Sequence[SubjectMeta], *, collate_fn_map: Any = None) -> list[SubjectMeta]:
    return list(batch)


# torch's default_collate (used by MONAI's list_data_collate) looks types up in this map first:
# torch's documented way to collate a custom type (torch.utils.data.default_collate docs).
default_collate_fn_map.setdefault(SubjectMeta, _collate_meta)


class LoadSubjectd:
    """MONAI-style loader: a pyable-tio ``tio.Subject`` (not loaded) to a dict of ``MetaTensor``.

    Plays the part of ``LoadImaged`` + ``EnsureChannelFirstd`` + ``ResampleToMatchd`` as the
    first transform of a MONAI pipeline over ``subjects_from_manifest(...)`` (e.g. for a
    ``monai.data.CacheDataset``). Each image is read by its own reader, exactly as TorchIO
    loads it (``tio.Image.read_and_check``), so values equal the TorchIO subject's; the subject
    itself is not modified (it stays unloaded, small to pickle into workers).

    Returns ``{"images" (or "image_i"), "roi_i", "labelmap_i": MetaTensor C x D x H x W
    (Z,Y,X), "id": str, "meta": SubjectMeta, <extra fields>}``. Each ``MetaTensor`` has
    ``affine`` (index (d, h, w) to RAS mm, float64) and the meta keys MONAI's loaders set:
    ``original_affine``, ``spatial_shape`` (D, H, W), ``space`` (``"RAS"``),
    ``original_channel_dim`` (0: ``EnsureChannelFirstd`` is a no-op) and ``filename_or_obj``
    (the first source file).

    Example:
        >>> subjects = pt.subjects_from_manifest('manifest.json')  # doctest: +SKIP
        >>> dataset = monai.data.CacheDataset(subjects, transform=Compose([LoadSubjectd(), ...]))  # doctest: +SKIP
    """

    def __call__(self, subject: tio.Subject) -> dict[str, Any]:
        return subject_to_monai(subject)


def subject_to_monai(subject: tio.Subject) -> dict[str, Any]:
    """The MONAI item of a pyable-tio subject (see :class:`LoadSubjectd`).

    Args:
        subject: From :func:`pyable_tio.subjects_from_manifest`; loaded or not (a loaded
            subject's tensors are used as they are, e.g. after TorchIO transforms).

    Raises:
        LoadError: a file that cannot be read or resampled (naming subject and file).

    Example:
        >>> item = subject_to_monai(subjects[0])  # doctest: +SKIP
        >>> item['images'].shape, item['images'].affine.shape  # doctest: +SKIP
        (torch.Size([2, 20, 28, 32]), torch.Size([4, 4]))
    """
    monai = require_monai()
    item: dict[str, Any] = {}
    for key, value in subject.items():
        if isinstance(value, tio.Image):
            item[key] = _meta_tensor(monai, value)
        elif key == META:
            item[key] = SubjectMeta(copy.deepcopy(value))  # the item's own: the subject's stays as it is
        else:
            item[key] = value
    return item


def _meta_tensor(monai: Any, image: tio.Image) -> Any:
    if tio.DATA in image:  # loaded (e.g. transformed by TorchIO): use its tensors
        data, affine = image.data, image.affine
    else:
        # TorchIO's own read path (reader, dtype checks, channel stacking), without loading the
        # subject's image: the dataset's subjects stay small.
        paths = image.path if isinstance(image.path, list) else [image.path]
        arrays, affine = [], None
        for path in paths:
            tensor, file_affine = image.read_and_check(path)
            arrays.append(tensor)
            affine = file_affine if affine is None else affine
        data = torch.cat(arrays) if len(arrays) > 1 else arrays[0]
    affine = np.asarray(affine, dtype=np.float64)
    source = image.path[0] if isinstance(image.path, list) else image.path
    meta = {
        'original_affine': affine.copy(),
        'spatial_shape': np.asarray(data.shape[1:]),
        'space': MONAI_SPACE,
        'original_channel_dim': 0,
        'filename_or_obj': str(source) if source is not None else '',
    }
    return monai.data.MetaTensor(data, affine=torch.as_tensor(affine), meta=meta)


def monai_dataset(
    source: ManifestSource,
    transform: Callable | Sequence[Callable] | None = None,
    cache_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Any:
    """A ``monai.data.Dataset`` of the manifest's subjects, items as MONAI ``MetaTensor`` dicts.

    Replaces MONAI's ``LoadImaged`` + ``EnsureChannelFirstd`` + ``ResampleToMatchd`` (and
    ``PersistentDataset``): files are read, transformed and resampled onto each subject's
    reference grid once by pyable-tio's readers (labels nearest-neighbour, values kept), cached
    in ``cache_dir`` as memory-mapped ``.npy`` files, and ``transform`` (any MONAI dictionary
    transform) runs on the items. The dataset's ``data`` is the list of (unloaded)
    ``tio.Subject`` objects; its transform is ``Compose([LoadSubjectd(), transform])``.

    Items (see :class:`LoadSubjectd`): ``"images"`` C x D x H x W and ``"roi_i"``,
    ``"labelmap_i"`` 1 x D x H x W as ``MetaTensor`` in **Z,Y,X** order, with the subject's
    affine (index to RAS mm) and MONAI's meta keys; ``"id"``, ``"meta"`` and the extra manifest
    fields. Per-axis MONAI parameters (``spatial_axis``, ``pixdim``, ``roi_size``) are in
    (D, H, W) = (z, y, x) order.

    Args:
        source: Anything :func:`pyable_tio.read_manifest` accepts.
        transform: A MONAI (dictionary) transform, a sequence of them (composed), or None.
        cache_dir: Folder of the on-disk cache of resampled volumes (off when None).
        **kwargs: Passed to :func:`pyable_tio.subjects_from_manifest` (``missing="empty"``
            for subjects with different numbers of ROIs/label maps, ``reference_space=``,
            ``orientation=``, ...).

    Returns:
        A ``monai.data.Dataset``; use it with ``monai.data.DataLoader`` (``list_data_collate``
        for multi-sample crops).

    Raises:
        ImportError: MONAI is not installed (the message says how to install it).
        ManifestError: a bad manifest, as :func:`pyable_tio.subjects_from_manifest`.

    Example:
        >>> from monai.transforms import RandCropByPosNegLabeld
        >>> crop = RandCropByPosNegLabeld(['images', 'labelmap_0'], 'labelmap_0', (8, 16, 16), num_samples=2)
        >>> dataset = monai_dataset('manifest.json', transform=crop, cache_dir='cache')  # doctest: +SKIP
        >>> [patch['images'].shape for patch in dataset[0]]  # doctest: +SKIP
        [torch.Size([2, 8, 16, 16]), torch.Size([2, 8, 16, 16])]
    """
    monai = require_monai()
    subjects = subjects_from_manifest(source, cache_dir=cache_dir, **kwargs)
    steps: list[Callable] = [LoadSubjectd()]
    if transform is not None:
        if callable(transform):
            steps.append(transform)
        else:
            steps.extend(transform)
    for step in steps:
        if not callable(step):
            raise TypeError(f'transform must be a MONAI transform or a sequence of them, got {step!r}')
    return monai.data.Dataset(data=subjects, transform=monai.transforms.Compose(steps))
