"""TorchIO transforms for subjects in pyable's Z,Y,X layout (C x D x H x W).

- :class:`ToZYX`, :func:`check_zyx`: the layout guard (undo ``ToCanonical``/``Transpose``...);
  :class:`ToTorchIO2D`, :class:`FromTorchIO2D`, :func:`in_torchio_layout`: 2-D subjects shown
  to TorchIO's transforms in TorchIO's 2-D layout.
- :class:`IntensityNormalization`, :class:`RandomFlip`, :class:`RandomRotation90`,
  :class:`Compose`, :class:`CallableTransform`: the seed's transforms as TorchIO transforms.
- :class:`RandomAffine`, :class:`RandomElasticDeformation`, :class:`RandomAnisotropy`,
  :class:`RandomGhosting`, :class:`RandomMotion`: TorchIO's, kept in plane on 2-D subjects.
- :func:`seed_everything`, :func:`worker_init_fn`, :func:`seeded_loader`, :func:`reset_queue`:
  validation mode.

Example:
    >>> import torchio as tio
    >>> from pyable_tio import transforms as T
    >>> augment = T.Compose([T.IntensityNormalization(), T.RandomFlip(('H', 'W')), tio.RandomNoise()])
"""

from __future__ import annotations

from .adapter import CallableTransform, changes_labels
from .compose import Compose
from .intensity import IntensityNormalization
from .layout import (
    FromTorchIO2D,
    LayoutError,
    ToTorchIO2D,
    ToZYX,
    check_zyx,
    in_torchio_layout,
    is_zyx,
    with_layout_guard,
)
from .planar import (
    RandomAffine,
    RandomAnisotropy,
    RandomElasticDeformation,
    RandomGhosting,
    RandomMotion,
    slice_normal_axis,
)
from .seeding import reset_queue, seed_everything, seeded_loader, worker_init_fn
from .spatial import RandomFlip, RandomRotation90, Rotation90

__all__ = [
    'CallableTransform',
    'Compose',
    'FromTorchIO2D',
    'IntensityNormalization',
    'LayoutError',
    'RandomAffine',
    'RandomAnisotropy',
    'RandomElasticDeformation',
    'RandomFlip',
    'RandomGhosting',
    'RandomMotion',
    'RandomRotation90',
    'Rotation90',
    'ToTorchIO2D',
    'ToZYX',
    'changes_labels',
    'check_zyx',
    'in_torchio_layout',
    'is_zyx',
    'reset_queue',
    'seed_everything',
    'seeded_loader',
    'slice_normal_axis',
    'with_layout_guard',
    'worker_init_fn',
]
