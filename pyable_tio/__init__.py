"""pyable-tio: manifests of medical images as TorchIO subjects in pyable's Z,Y,X layout.

Example:
    >>> import pyable_tio as pt
    >>> subjects = pt.subjects_from_manifest('manifest.json')  # doctest: +SKIP
    >>> subjects[0]['images'].data.shape  # C x D x H x W  # doctest: +SKIP
"""

from __future__ import annotations

from .backend import active_backend, pyable_available
from .data import dataset_from_manifest, make_sampler, queue_from_manifest
from .errors import LoadError, ManifestError, PyableTioError
from .geometry import Grid
from .manifest import FileEntry, Manifest, SubjectRecord, TransformEntry, read_manifest
from .reader import GridReader
from .reference import ImageHeader
from .subjects import EmptyLabelReader, subjects_from_manifest

__version__ = '0.1.0'

__all__ = [
    'EmptyLabelReader',
    'FileEntry',
    'Grid',
    'GridReader',
    'ImageHeader',
    'LoadError',
    'Manifest',
    'ManifestError',
    'PyableTioError',
    'SubjectRecord',
    'TransformEntry',
    'active_backend',
    'dataset_from_manifest',
    'make_sampler',
    'pyable_available',
    'queue_from_manifest',
    'read_manifest',
    'subjects_from_manifest',
]
