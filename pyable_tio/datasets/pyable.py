"""The seed's dict API: whole volumes as plain dicts of tensors, built on the same subjects.

``PyableDataset`` is a thin view over :func:`pyable_tio.subjects_from_manifest`: the same
manifest parsing, readers (one interpolation onto each subject's grid) and cache. Only file
headers are read at construction; each item is loaded in ``__getitem__``.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
import torchio as tio

from ..constants import DEFAULT_BACKGROUND, ID, IMAGE_PREFIX, IMAGES, ITEM_IMAGES, ITEM_LABELMAPS, ITEM_ROIS, LABELMAP_PREFIX, LINEAR, META, REFERENCE_FIRST, ROI_PREFIX
from ..manifest import ManifestSource
from ..plan import reference_grid
from ..geometry.reference import ReferenceSelector, ReferenceSpace
from ..subjects import subjects_from_manifest
from ..transforms.adapter import CallableTransform, item_meta
from ..transforms.layout import with_layout_guard

#: What ``transforms=`` accepts: one transform or a sequence applied in order.
TransformSpec = Union[tio.Transform, Callable, Sequence[Union[tio.Transform, Callable]]]


class PyableDataset(torch.utils.data.Dataset):
    """Whole volumes as the seed's plain dicts, one item per manifest subject.

    Each item is::

        {
            "id": str,
            "images": C x D x H x W tensor (or a list of D x H x W tensors, one per channel,
                      with ``stack_channels=False``),
            "rois": [D x H x W tensor, ...],        # this subject's own ROIs (may be empty)
            "labelmaps": [D x H x W tensor, ...],   # integer values, never interpolated
            "meta": {...},                          # only with ``return_meta=True``
            <extra manifest field>: value, ...      # e.g. a class label or an age
        }

    Tensors are in **Z,Y,X order** (D = slices along z, H = rows along y, W = columns along
    x), as ``sitk.GetArrayFromImage`` gives them; 2-D files give D = 1. ROIs and label maps
    keep their integer pixel type.

    ``meta`` holds ``spacing``, ``origin``, ``direction`` (row-major 3 x 3, or 2 x 2 for 2-D)
    and ``size`` in **x,y,z order** (SimpleITK's, the same as :func:`subjects_from_manifest`'s
    meta; ``meta["axis_order"] == "xyz"`` says so) and ``affine`` (4 x 4 voxel-to-RAS matrix
    whose columns follow the tensors' Z,Y,X index order), plus ``orientation``,
    ``source_paths``, ``reference_used``, ``transforms_applied`` and ``names``. The geometry
    describes the returned tensors: after a spatial TorchIO transform it is recomputed from
    the transformed affine. ``size`` reversed is the tensors' (D, H, W) (2-D: (H, W)).

    Subjects may differ (``missing="keep"``): each item lists its subject's own images,
    ROIs and label maps, and ``DataLoader(dataset, batch_size=1)`` with PyTorch's default
    collate works. :func:`pyable_tio.datasets.collate` pads shapes and ROI counts; it needs the same
    image channels in every item of a batch (build with ``missing="error"`` to check that
    here, before training starts).

    Args:
        source: Anything :func:`pyable_tio.read_manifest` accepts (JSON, CSV, list of
            CSVs, dict, list of image paths). ``manifest=`` is the deprecated spelling.
        reference: How each subject's reference grid is chosen: ``"first"``, ``"largest"``,
            an index, or a callable given the image headers returning an index. A subject's
            own ``reference`` in the manifest wins. ``reference_selector=`` is the
            deprecated spelling.
        reference_space: One grid for every subject (image path, grid dict in x,y,z order, or
            :class:`Grid`); overrides every reference.
        transforms: ``None``, one transform or a sequence of them, applied in order to the loaded
            subject: TorchIO transforms (the package's own too), and seed-style functions
            ``fn(images, rois, labelmaps, meta) -> (images, rois, labelmaps[, meta])`` given the
            item's C x D x H x W ``images`` tensor, lists of D x H x W ``rois``/``labelmaps``
            tensors and the item's ``meta`` (run through
            :class:`pyable_tio.transforms.CallableTransform`: the same contract, checks and
            history). Every callable that is not a ``tio.Transform`` is a seed-style function,
            whatever its signature; make a subject-level function a ``tio.Transform``. The
            transforms are followed by :class:`pyable_tio.ToZYX`, so items stay in Z,Y,X order
            even after a transform that reorders axes (``tio.ToCanonical``).
        stack_channels: ``images`` as one C x D x H x W tensor (True) or a list of D x H x W
            tensors (False).
        cache_dir: Folder of the on-disk cache of resampled volumes (off when None).
        dtype: Floating dtype of the images.
        return_meta: Include ``meta`` in each item.
        interpolator: Image interpolator (``"linear"``, ``"bspline"``, ...); ROIs and label
            maps are always nearest-neighbour.
        default_value: Image value outside a file's field of view.
        root: Folder that relative manifest paths resolve against (default: the manifest's).
        **subject_options: Any other keyword of :func:`pyable_tio.subjects_from_manifest`
            (e.g. ``missing``, ``cache_max_bytes``, ``orientation``, ``progress``).

    Raises:
        ManifestError: at construction, for a bad manifest, missing or unreadable files or
            images of one subject that disagree in dimension (each naming subject and file).
        ValueError: a ``transforms`` entry that is not callable.

    Example:
        >>> dataset = PyableDataset('manifest.json', reference='largest')  # doctest: +SKIP
        >>> item = dataset[0]  # doctest: +SKIP
        >>> item['images'].shape, len(item['rois']), item['meta']['axis_order']  # doctest: +SKIP
        (torch.Size([2, 32, 40, 48]), 1, 'xyz')
    """

    def __init__(
        self,
        source: ManifestSource | None = None,
        reference: ReferenceSelector = REFERENCE_FIRST,
        reference_space: ReferenceSpace | None = None,
        transforms: TransformSpec | None = None,
        stack_channels: bool = True,
        cache_dir: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.float32,
        return_meta: bool = True,
        *,
        interpolator: str = LINEAR,
        default_value: float = DEFAULT_BACKGROUND,
        root: str | os.PathLike | None = None,
        **subject_options: Any,
    ) -> None:
        source = _renamed(subject_options, 'manifest', 'source', source)
        reference = _renamed(subject_options, 'reference_selector', 'reference', reference, REFERENCE_FIRST)
        if source is None:
            raise TypeError('PyableDataset needs a manifest: PyableDataset(source, ...)')
        self.transforms = seed_transforms(transforms)
        # As for datasets and queues: TorchIO's transforms see 2-D subjects in TorchIO's 2-D
        # layout, and whatever a transform reordered (ToCanonical...), items stay Z,Y,X.
        self._pipeline = with_layout_guard(tio.Compose(self.transforms)) if self.transforms else None
        self.stack_channels = stack_channels
        self.return_meta = return_meta
        self.subjects = subjects_from_manifest(
            source,
            reference=reference,
            reference_space=reference_space,
            stack_channels=stack_channels,
            dtype=dtype,
            interpolator=interpolator,
            default_value=default_value,
            cache_dir=cache_dir,
            root=root,
            **subject_options,
        )

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Load subject ``index``, apply the transforms and return the item dict.

        Raises:
            LoadError: a file that cannot be read or resampled (naming subject and file).
            TypeError: a seed-style function that does not return ``(images, rois, labelmaps)``
                (or with ``meta``).
            ValueError: a seed-style function that changes counts, shapes or label values.
        """
        # A copy, so that loaded voxels never accumulate in the dataset (nor in workers).
        subject = copy.deepcopy(self.subjects[index])
        subject.load()
        if self._pipeline is not None:
            subject = self._pipeline(subject)
        item = subject_to_item(subject, self.stack_channels)
        if not self.return_meta:
            del item[META]
        return item

    @property
    def ids(self) -> list[str]:
        """Subject identifiers, in dataset order."""
        return [subject[ID] for subject in self.subjects]


def subject_to_item(subject: tio.Subject, stack_channels: bool = True) -> dict[str, Any]:
    """The seed's dict of a loaded subject built by :func:`subjects_from_manifest`.

    Args:
        subject: A loaded subject (keys ``images`` or ``image_i``, ``roi_i``, ``labelmap_i``,
            ``id``, ``meta`` and extra fields).
        stack_channels: ``images`` as one C x D x H x W tensor, or a list of D x H x W tensors
            (one per channel).

    Returns:
        ``{"id", "images", "rois", "labelmaps", "meta", <extra fields>}``; see
        :class:`PyableDataset` for shapes and the axis order of ``meta``.

    Example:
        >>> subject = subjects_from_manifest('manifest.json')[0]  # doctest: +SKIP
        >>> subject.load()  # doctest: +SKIP
        >>> subject_to_item(subject)['images'].shape  # C x D x H x W  # doctest: +SKIP
    """
    images = _images(subject)
    if stack_channels:
        data = torch.cat([image.data for image in images]) if len(images) > 1 else images[0].data
    else:
        data = [channel for image in images for channel in image.data]
    extra = {key: value for key, value in subject.items() if not isinstance(value, tio.Image)}
    item = {ID: subject[ID], ITEM_IMAGES: data}
    item[ITEM_ROIS] = [image.data[0] for image in _numbered(subject, ROI_PREFIX)]
    item[ITEM_LABELMAPS] = [image.data[0] for image in _numbered(subject, LABELMAP_PREFIX)]
    item[META] = item_meta(subject[META], images[0], reference_grid(subject))
    for key, value in extra.items():
        if key not in (ID, META):
            item[key] = value
    return item


def seed_transforms(transforms: TransformSpec | None) -> list[tio.Transform]:
    """``transforms`` as TorchIO transforms: every other callable wrapped in ``CallableTransform``.

    No signature is inspected: a callable that is not a ``tio.Transform`` is a seed-style
    function ``(images, rois, labelmaps, meta) -> (images, rois, labelmaps[, meta])``.

    Raises:
        ValueError: an entry that is not callable.

    Example:
        >>> steps = seed_transforms([tio.RandomFlip(), lambda i, r, l, m: (i, r, l)])
        >>> [type(step).__name__ for step in steps]
        ['RandomFlip', 'CallableTransform']
    """
    if transforms is None:
        return []
    entries = [transforms] if callable(transforms) else list(transforms)
    steps: list[tio.Transform] = []
    for entry in entries:
        if not callable(entry):
            raise ValueError(f'transforms must be callables or TorchIO transforms, got {entry!r}')
        steps.append(entry if isinstance(entry, tio.Transform) else CallableTransform(entry))
    return steps


def _images(subject: tio.Subject) -> list[tio.Image]:
    if IMAGES in subject and isinstance(subject[IMAGES], tio.Image):
        return [subject[IMAGES]]
    return _numbered(subject, IMAGE_PREFIX)


def _numbered(subject: tio.Subject, prefix: str) -> list[tio.Image]:
    found = []
    while f'{prefix}{len(found)}' in subject:
        found.append(subject[f'{prefix}{len(found)}'])
    return found


def _renamed(options: dict[str, Any], old: str, new: str, value: Any, default: Any = None) -> Any:
    """``value``, or the deprecated keyword ``old`` popped from ``options`` (with a warning)."""
    if old not in options:
        return value
    if value is not default:
        raise TypeError(f'pass {new}= only ({old}= is its deprecated spelling)')
    warnings.warn(f'PyableDataset({old}=...) is deprecated; use {new}=..., as subjects_from_manifest does',
                  DeprecationWarning, stacklevel=3)
    return options.pop(old)
