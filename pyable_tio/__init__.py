"""pyable-tio: manifests of medical images as TorchIO subjects in pyable's Z,Y,X layout.

Example:
    >>> import pyable_tio as pt
    >>> subjects = pt.subjects_from_manifest('manifest.json')  # doctest: +SKIP
    >>> subjects[0]['images'].data.shape  # C x D x H x W  # doctest: +SKIP
"""

from __future__ import annotations

from . import transforms
from .cache import VolumeCache
from .datasets.collate import PadCollate, collate
from .datasets.monai import monai_dataset
from .datasets.pyable import PyableDataset
from .errors import LoadError, ManifestError, PyableTioError
from .inference.grid import inference_loader, predict_subject
from .inference.native import save_prediction, to_native
from .manifest import read_manifest
from .patching.loader import patch_loader  # noqa: F401  (pt.patch_loader; __all__ is full: lead's call)
from .patching.queue import PatchQueue
from .patching.split import plan_transform
from .preprocess import N4, SkullStrip
from .queues import QueueSampler, dataset_from_manifest, queue_from_manifest, set_epoch
from .subjects import subjects_from_manifest

__version__ = '0.1.0'


def __getattr__(name: str):
    # The QA sheet on first use: ``import pyable_tio`` stays free of Pillow and the sheet.
    if name == 'qa_sheet':
        from .qa.report import qa_sheet

        return qa_sheet
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted(set(globals()) | {'qa_sheet'})


# User-level names only; everything else is importable from its module (docs/API.md).
__all__ = [
    'LoadError',
    'ManifestError',
    'N4',
    'PadCollate',
    'PatchQueue',
    'PyableDataset',
    'PyableTioError',
    'QueueSampler',
    'SkullStrip',
    'VolumeCache',
    'collate',
    'dataset_from_manifest',
    'inference_loader',
    'monai_dataset',
    'plan_transform',
    'predict_subject',
    'qa_sheet',
    'queue_from_manifest',
    'read_manifest',
    'save_prediction',
    'set_epoch',
    'subjects_from_manifest',
    'to_native',
    'transforms',
]
