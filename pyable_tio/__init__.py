"""pyable-tio: manifests of medical images as TorchIO subjects in pyable's Z,Y,X layout.

The names below load on first use (PEP 562), so that ``import pyable_tio`` and the
``pyable-tio --help`` command line start without torch, TorchIO and SimpleITK; ``pt.name``
and ``from pyable_tio import name`` work as plain imports would.

Example:
    >>> import pyable_tio as pt
    >>> subjects = pt.subjects_from_manifest('manifest.json')  # doctest: +SKIP
    >>> subjects[0]['images'].data.shape  # C x D x H x W  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from typing import TYPE_CHECKING, Any

__version__ = '0.1.0'

#: Each public name -> the module defining it (``""``: the subpackage of that name).
_EXPORTS = {
    'LoadError': '.errors',
    'ManifestError': '.errors',
    'N4': '.preprocess',
    'PadCollate': '.datasets.collate',
    'PyableDataset': '.datasets.pyable',
    'PyableTioError': '.errors',
    'SkullStrip': '.preprocess',
    'VolumeCache': '.cache',
    'collate': '.datasets.collate',
    'dataset_from_manifest': '.queues',
    'inference_loader': '.inference.grid',
    'monai_dataset': '.datasets.monai',
    'patch_loader': '.patching.loader',
    'plan_transform': '.patching.split',
    'predict_subject': '.inference.grid',
    'qa_sheet': '.qa.report',
    'queue_from_manifest': '.queues',
    'read_manifest': '.manifest',
    'save_prediction': '.inference.native',
    'set_epoch': '.queues',
    'subjects_from_manifest': '.subjects',
    'to_native': '.inference.native',
    'transforms': '',
}

# User-level names only; everything else is importable from its module (docs/API.md).
__all__ = sorted(_EXPORTS, key=lambda name: (name[0].islower(), name))

#: Names exported at the top level before the package was grouped by stage -> their module.
#: ``pt.name`` still works for them, with a DeprecationWarning naming the import to use.
_MOVED = {
    'Alignment': '.geometry.alignment',
    'align_subject': '.geometry.alignment',
    'CacheStats': '.cache',
    'EmptyLabelReader': '.subjects',
    'FileEntry': '.manifest',
    'Manifest': '.manifest',
    'SubjectRecord': '.manifest',
    'TransformEntry': '.manifest',
    'Grid': '.geometry.grid',
    'axis_aligned_grid': '.geometry.grid',
    'reorient_grid': '.geometry.grid',
    'GridInference': '.inference.grid',
    'SubjectGridAggregator': '.inference.grid',
    'GridReader': '.reader',
    'ImageHeader': '.geometry.reference',
    'NativeSpaceError': '.inference.native',
    'native_grid': '.inference.native',
    'PatchQueue': '.patching.queue',
    'PlanEntry': '.plan',
    'SubjectPlan': '.plan',
    'plan_of': '.plan',
    'PreprocessStep': '.preprocess',
    'QueueSampler': '.queues',
    'ToZYX': '.transforms',
    'TransformPlan': '.patching.split',
    'make_sampler': '.queues',
    'active_backend': '.io.backend',
    'pyable_available': '.io.backend',
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None and name in _MOVED:
        warnings.warn(f'pyable_tio.{name} is deprecated: use "from pyable_tio{_MOVED[name]} import {name}"'
                      ' (pyable_tio.__all__ lists the user-level names)', DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name], __name__), name)
    if module is None:
        if not name.startswith('_') and importlib.util.find_spec(f'{__name__}.{name}') is not None:
            # A subpackage (pt.geometry.grid.Grid): load the public names first, so that the
            # modules they use are attributes of their packages, as after an eager import.
            for export in __all__:
                __getattr__(export)
            return importlib.import_module(f'.{name}', __name__)
        raise AttributeError(f"module 'pyable_tio' has no attribute {name!r}")
    value = importlib.import_module(f'.{name}' if module == '' else module, __name__)
    if module != '':
        value = getattr(value, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from . import transforms
    from .cache import VolumeCache
    from .datasets.collate import PadCollate, collate
    from .datasets.monai import monai_dataset
    from .datasets.pyable import PyableDataset
    from .errors import LoadError, ManifestError, PyableTioError
    from .inference.grid import inference_loader, predict_subject
    from .inference.native import save_prediction, to_native
    from .manifest import read_manifest
    from .patching.loader import patch_loader
    from .patching.split import plan_transform
    from .qa.report import qa_sheet
    from .preprocess import N4, SkullStrip
    from .queues import dataset_from_manifest, queue_from_manifest, set_epoch
    from .subjects import subjects_from_manifest
