"""The seed's dict API: whole volumes as plain dicts of tensors, built on the same subjects.

``PyableDataset`` is a thin view over :func:`pyable_tio.subjects_from_manifest`: the same
manifest parsing, readers (one interpolation onto each subject's grid) and cache. Only file
headers are read at construction; each item is loaded in ``__getitem__``.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch
import torchio as tio

from .constants import (
    DEFAULT_BACKGROUND,
    ID,
    IMAGE_PREFIX,
    IMAGES,
    ITEM_IMAGES,
    ITEM_LABELMAPS,
    ITEM_ROIS,
    LABELMAP_PREFIX,
    LINEAR,
    META,
    META_AXIS_ORDER,
    REFERENCE_FIRST,
    ROI_PREFIX,
)
from .errors import describe
from .geometry import Grid, grid_from_meta, planar_grid, ras_affine_to_grid
from .manifest import ManifestSource
from .reference import ReferenceSelector, ReferenceSpace
from .subjects import MISSING_EMPTY, subjects_from_manifest
from .transforms.layout import ToZYX

#: The seed's transform: ``(images, rois, labelmaps, meta) -> (images, rois, labelmaps)``.
DictTransform = Callable[[Any, list, list, dict], tuple]
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

    Args:
        manifest: Anything :func:`pyable_tio.read_manifest` accepts (JSON, CSV, list of
            CSVs, dict, list of image paths).
        reference_selector: How each subject's reference grid is chosen: ``"first"``,
            ``"largest"``, an index, or a callable given the image headers returning an
            index. A subject's own ``reference`` in the manifest wins. Passed to
            ``subjects_from_manifest(reference=...)``.
        reference_space: One grid for every subject (image path, grid dict in x,y,z order, or
            :class:`Grid`); overrides every reference.
        transforms: ``None``; a TorchIO transform (or any callable taking and returning a
            ``tio.Subject``, e.g. the package's own transforms), applied to the loaded
            subject; a callable with the seed's signature ``(images, rois, labelmaps, meta) ->
            (images, rois, labelmaps)`` applied to the item's tensors; or a sequence of these,
            applied in order (subject transforms before dict transforms). Subject transforms
            are followed by :class:`pyable_tio.ToZYX`, so items stay in Z,Y,X order even after
            a transform that reorders axes (``tio.ToCanonical``).
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
            (e.g. ``cache_max_bytes``, ``orientation``, ``progress``); ``missing`` is set here.

    Raises:
        ManifestError: at construction, for a bad manifest, missing or unreadable files or
            images of one subject that disagree in dimension (each naming subject and file).
        ValueError: a ``transforms`` entry that is not callable, or a subject transform
            placed after a dict transform.

    Example:
        >>> dataset = PyableDataset('manifest.json', reference_selector='largest')  # doctest: +SKIP
        >>> item = dataset[0]  # doctest: +SKIP
        >>> item['images'].shape, len(item['rois']), item['meta']['axis_order']  # doctest: +SKIP
        (torch.Size([2, 32, 40, 48]), 1, 'xyz')
    """

    def __init__(
        self,
        manifest: ManifestSource,
        reference_selector: ReferenceSelector = REFERENCE_FIRST,
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
        self.subject_transforms, self.dict_transforms = split_transforms(transforms)
        self.stack_channels = stack_channels
        self.return_meta = return_meta
        # missing="empty" lets subjects list different numbers of ROIs/label maps; the fillers
        # are removed below so that each item lists only its subject's own files.
        subjects = subjects_from_manifest(
            manifest,
            reference=reference_selector,
            reference_space=reference_space,
            stack_channels=stack_channels,
            dtype=dtype,
            interpolator=interpolator,
            default_value=default_value,
            missing=MISSING_EMPTY,
            cache_dir=cache_dir,
            root=root,
            **subject_options,
        )
        for subject in subjects:
            _drop_fillers(subject)
        self.subjects = subjects

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Load subject ``index``, apply the transforms and return the item dict.

        Raises:
            LoadError: a file that cannot be read or resampled (naming subject and file).
            TypeError: a dict transform that does not return ``(images, rois, labelmaps)``.
        """
        # A copy, so that loaded voxels never accumulate in the dataset (nor in workers).
        subject = copy.deepcopy(self.subjects[index])
        subject.load()
        for transform in self.subject_transforms:
            subject = transform(subject)
        if self.subject_transforms:
            # As for datasets and queues: whatever a transform reordered (ToCanonical...), items stay Z,Y,X.
            subject = ToZYX()(subject)
        item = subject_to_item(subject, self.stack_channels)
        for transform in self.dict_transforms:
            result = transform(item[ITEM_IMAGES], item[ITEM_ROIS], item[ITEM_LABELMAPS], item[META])
            if not isinstance(result, (tuple, list)) or len(result) != 3:
                problem = f'transform {transform!r} must return (images, rois, labelmaps), got {type(result).__name__}'
                raise TypeError(describe(item[ID], None, problem))
            images, rois, labelmaps = result
            item[ITEM_IMAGES], item[ITEM_ROIS], item[ITEM_LABELMAPS] = images, list(rois), list(labelmaps)
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
    item[META] = _item_meta(subject[META], images[0])
    for key, value in extra.items():
        if key not in (ID, META):
            item[key] = value
    return item


def split_transforms(transforms: TransformSpec | None) -> tuple[list[Callable], list[DictTransform]]:
    """Sort ``transforms`` into subject transforms and seed-signature dict transforms.

    A ``tio.Transform`` is a subject transform; another callable is a dict transform when it
    takes four positional arguments ``(images, rois, labelmaps, meta)``, else a subject
    transform (one argument, a ``tio.Subject``).

    Raises:
        ValueError: an entry that is not callable, or a subject transform after a dict one.

    Example:
        >>> subject_level, dict_level = split_transforms([tio.RandomFlip(), lambda i, r, l, m: (i, r, l)])
        >>> len(subject_level), len(dict_level)
        (1, 1)
    """
    if transforms is None:
        return [], []
    entries = [transforms] if callable(transforms) else list(transforms)
    subject_level: list[Callable] = []
    dict_level: list[DictTransform] = []
    for entry in entries:
        if not callable(entry):
            raise ValueError(f'transforms must be callables or TorchIO transforms, got {entry!r}')
        if _is_dict_transform(entry):
            dict_level.append(entry)
        elif dict_level:
            raise ValueError(
                f'subject transform {entry!r} comes after a (images, rois, labelmaps, meta) transform;'
                ' put TorchIO/subject transforms first'
            )
        else:
            subject_level.append(entry)
    return subject_level, dict_level


def _is_dict_transform(entry: Callable) -> bool:
    if isinstance(entry, tio.Transform):
        return False
    try:
        parameters = inspect.signature(entry).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    return len(positional) >= 4 or (varargs and len(positional) < 2)


def _images(subject: tio.Subject) -> list[tio.Image]:
    if IMAGES in subject and isinstance(subject[IMAGES], tio.Image):
        return [subject[IMAGES]]
    return _numbered(subject, IMAGE_PREFIX)


def _numbered(subject: tio.Subject, prefix: str) -> list[tio.Image]:
    found = []
    while f'{prefix}{len(found)}' in subject:
        found.append(subject[f'{prefix}{len(found)}'])
    return found


def _drop_fillers(subject: tio.Subject) -> None:
    """Remove the all-zero ROIs/label maps added for subjects that list fewer of them."""
    sources = subject[META]['source_paths']
    for field, prefix in ((ITEM_ROIS, ROI_PREFIX), (ITEM_LABELMAPS, LABELMAP_PREFIX)):
        index = len(sources[field])
        while f'{prefix}{index}' in subject:
            subject.remove_image(f'{prefix}{index}')
            index += 1


def _item_meta(subject_meta: dict[str, Any], image: tio.Image) -> dict[str, Any]:
    """The subject's meta, with geometry that describes the (possibly transformed) tensors."""
    meta = dict(subject_meta)
    reference = grid_from_meta(meta)
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
