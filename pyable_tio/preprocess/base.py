"""The step protocol: a callable ``sitk.Image -> sitk.Image`` with a ``key`` for the cache.

A step runs on one image file in its native space (its own voxels, before any registration
transform or resampling). Its ``key`` is everything its output depends on besides the input:
its name, parameters and the versions of the tools it runs. Two steps with equal keys must
give the same output, because the cache serves one for the other.

A step of one's own needs only ``__call__`` and ``key``; subclassing :class:`PreprocessStep`
adds masks (:meth:`PreprocessStep.apply`) and a dependency check.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import SimpleITK as sitk

#: Masks a step may read or add, by name: ``"brain"`` (from :class:`SkullStrip`) or an ROI key.
Masks = Mapping[str, sitk.Image]


@runtime_checkable
class Step(Protocol):
    """What a preprocessing step must offer (any object with these two members).

    Example:
        >>> class Clip:
        ...     key = {'name': 'clip', 'maximum': 1000.0}
        ...     def __call__(self, image):
        ...         return sitk.Clamp(image, upperBound=1000.0)
        >>> isinstance(Clip(), Step)
        True
    """

    @property
    def key(self) -> Any:
        """JSON-serialisable description: name, parameters and tool versions."""

    def __call__(self, image: sitk.Image) -> sitk.Image:
        """The processed image, on the same grid as ``image``."""


class PreprocessStep:
    """Base class of the built-in steps: ``__call__``, ``key``, masks and dependencies.

    Subclasses are frozen dataclasses; their fields are the parameters and enter ``key``
    with :meth:`versions`. ``apply`` receives the masks made so far (``"brain"`` after a
    skull strip, ROI masks a step asked for) and returns the image plus any new masks.

    Example:
        >>> import pyable_tio as pt
        >>> pt.N4(shrink_factor=2).key['parameters']['shrink_factor']
        2
    """

    #: Name in the registry and in manifests (``"n4"``, ``"skullstrip"``).
    name: ClassVar[str] = ''

    def __call__(self, image: sitk.Image) -> sitk.Image:
        raise NotImplementedError

    def apply(self, image: sitk.Image, masks: Masks) -> tuple[sitk.Image, dict[str, sitk.Image]]:
        """The processed image and the masks this step adds (none by default).

        Example:
            >>> image, new_masks = pt.N4().apply(t1, {})  # doctest: +SKIP
        """
        return self(image), {}

    @property
    def key(self) -> dict[str, Any]:
        """Name, parameters and tool versions: what the cache key of the output includes."""
        parameters = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return {'name': self.name, 'parameters': parameters, 'versions': self.versions()}

    def versions(self) -> dict[str, str]:
        """Versions of the tools the step runs (SimpleITK by default)."""
        return {'SimpleITK': sitk.Version.VersionString()}

    def masks_needed(self) -> tuple[str, ...]:
        """Names of masks this step reads (``"brain"`` or ROI keys such as ``"roi_0"``)."""
        return ()

    def masks_made(self) -> tuple[str, ...]:
        """Names of masks this step adds."""
        return ()

    def missing_dependencies(self) -> list[str]:
        """One line per missing dependency, saying how to install it (empty when all are there)."""
        return []


@functools.lru_cache(maxsize=None)
def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None (looked up once per process).

    Example:
        >>> package_version('SimpleITK') is not None
        True
    """
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def step_key(step: Any) -> Any:
    """``step.key``, checked to exist (a step without a key cannot be cached).

    Raises:
        ValueError: naming the step when it has no ``key`` or is not callable.

    Example:
        >>> step_key(pt.N4())['name']  # doctest: +SKIP
        'n4'
    """
    key = getattr(step, 'key', None)
    if key is None or not callable(step):
        raise ValueError(
            f'a preprocessing step must be callable (sitk.Image -> sitk.Image) and have a `key`'
            f' describing its parameters, got {step!r}'
        )
    return key
