"""Preprocessing steps run once per file, in its native space, and cached.

Built-in steps: :class:`N4` (bias-field correction, SimpleITK) and :class:`SkullStrip`
(deepbet; ``pip install "pyable-tio[brain]"``). A step of one's own is any callable
``sitk.Image -> sitk.Image`` with a ``key`` (see :class:`~pyable_tio.preprocess.base.Step`).

Example:
    >>> import pyable_tio as pt
    >>> subjects = pt.subjects_from_manifest('manifest.json', preprocess=['n4', 'skullstrip'],
    ...                                      cache_dir='/tmp/cache')  # doctest: +SKIP
    >>> subjects[0]['roi_brain']  # doctest: +SKIP
"""

from __future__ import annotations

from .base import PreprocessStep, Step, package_version, step_key
from .n4 import N4
from .pipeline import Preprocessing, clear_recent
from .registry import STEPS, check_order, missing_dependencies, resolve_steps
from .skullstrip import SkullStrip

__all__ = [
    'N4',
    'STEPS',
    'PreprocessStep',
    'Preprocessing',
    'SkullStrip',
    'Step',
    'check_order',
    'clear_recent',
    'missing_dependencies',
    'package_version',
    'resolve_steps',
    'step_key',
]
