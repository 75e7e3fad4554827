"""The ops by transform type: which TorchIO steps run per patch, and as which class.

Importing this module registers every op class of :mod:`.spatial` and :mod:`.intensity`.
Only exact types are recognised: a subclass or an unknown callable may do anything, so it
runs on the whole volume.
"""

from __future__ import annotations

from typing import Any

from . import intensity, spatial
from .base import REGISTRY, PatchOp

#: The modules whose classes register themselves (kept referenced).
OP_MODULES = (spatial, intensity)


def op_for(step: Any) -> PatchOp | None:
    """The op running ``step`` per patch, or None when ``step`` is not supported per patch.

    Example:
        >>> import torchio as tio
        >>> type(op_for(tio.RandomAffine())).__name__, op_for(tio.RandomMotion())
        ('AffineOp', None)
    """
    cls = REGISTRY.get(type(step))
    return None if cls is None else cls(step)


def supported_types() -> list[type]:
    """The transform types that run per patch."""
    return list(REGISTRY)
