"""pyable-tio: manifests of medical images as TorchIO subjects in pyable's Z,Y,X layout.

Example:
    >>> import pyable_tio as pt
    >>> subjects = pt.subjects_from_manifest('manifest.json')  # doctest: +SKIP
    >>> subjects[0]['images'].data.shape  # C x D x H x W  # doctest: +SKIP
"""

from __future__ import annotations

from .alignment import Alignment, align_subject
from .backend import active_backend, pyable_available
from .cache import CacheStats, VolumeCache
from .collate import PadCollate, collate
from .data import QueueSampler, dataset_from_manifest, make_sampler, queue_from_manifest, set_epoch
from .errors import LoadError, ManifestError, PyableTioError, SkippedSubjectsWarning
from .geometry import Grid, axis_aligned_grid, reorient_grid
from .inference import GridInference, SubjectGridAggregator, inference_loader, predict_subject
from .manifest import FileEntry, Manifest, SubjectRecord, TransformEntry, read_manifest
from .monai_data import monai_dataset
from .native import NativeSpaceError, native_grid, save_prediction, to_native
from .patch_plan import TransformPlan, plan_transform
from .patches import PatchQueue
from .plan import PlanEntry, SubjectPlan, plan_of
from .preprocess import N4, PreprocessStep, SkullStrip
from .pyable_dataset import PyableDataset
from .reader import GridReader
from .reference import ImageHeader
from .subjects import EmptyLabelReader, subjects_from_manifest
from . import transforms
from .transforms import ToZYX

__version__ = '0.1.0'

__all__ = [
    'Alignment',
    'CacheStats',
    'EmptyLabelReader',
    'FileEntry',
    'Grid',
    'GridInference',
    'GridReader',
    'ImageHeader',
    'LoadError',
    'Manifest',
    'ManifestError',
    'N4',
    'NativeSpaceError',
    'PadCollate',
    'PatchQueue',
    'PlanEntry',
    'PreprocessStep',
    'PyableDataset',
    'PyableTioError',
    'QueueSampler',
    'SkippedSubjectsWarning',
    'SkullStrip',
    'SubjectGridAggregator',
    'SubjectPlan',
    'SubjectRecord',
    'ToZYX',
    'TransformEntry',
    'TransformPlan',
    'VolumeCache',
    'active_backend',
    'align_subject',
    'axis_aligned_grid',
    'collate',
    'dataset_from_manifest',
    'inference_loader',
    'make_sampler',
    'monai_dataset',
    'native_grid',
    'predict_subject',
    'plan_of',
    'plan_transform',
    'pyable_available',
    'queue_from_manifest',
    'read_manifest',
    'reorient_grid',
    'save_prediction',
    'set_epoch',
    'subjects_from_manifest',
    'to_native',
    'transforms',
]
