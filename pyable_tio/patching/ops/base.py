"""The op interface: one class per TorchIO transform that runs per patch, registered by type.

An op wraps one step (a TorchIO transform instance) and holds everything the patch path needs
to know about it: its kind, how it draws its parameters (TorchIO's ``get_params``
distributions, from the subject's own generator), the margin it needs around a region, and
how it applies. Spatial ops give their output-to-input map (:mod:`.spatial`); intensity ops
apply drawn parameters to tensors (:mod:`.intensity`). Adding a transform means adding one
class decorated with :func:`register` in one of those modules.

TorchIO's random transforms draw from torch's global generator; per-patch augmentation runs in
threads, where that stream would be shared and in no fixed order. So each op draws with
TorchIO's distributions (``RandomTransform.sample_uniform``: float32 uniforms; one draw per
image, per channel for gamma; the step's probability first) from the subject's own
``torch.Generator``: the same seed gives the same patches whatever the number of threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torchio as tio

#: Step kinds. Spatial steps move voxels; the others change values in place.
SPATIAL, POINTWISE, KERNEL, FIELD, STATISTICS = 'spatial', 'pointwise', 'kernel', 'field', 'statistics'

#: Exact transform type -> op class (filled by :func:`register`).
REGISTRY: dict[type, type[PatchOp]] = {}


def register(cls: type[PatchOp]) -> type[PatchOp]:
    """Class decorator: ``cls`` runs its ``transforms`` (exact types) per patch."""
    for transform_type in cls.transforms:
        REGISTRY[transform_type] = cls
    return cls


@dataclass
class Drawn:
    """One step with its parameters fixed, for the images it applies to.

    Attributes:
        op: The step's op (``op.step`` is the TorchIO transform).
        names: Subject keys of the images it applies to (TorchIO's include/exclude and
            intensity-only rules).
        params: The drawn parameters (per step, or per image name under ``per_image``).
    """

    op: PatchOp
    names: list[str]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> tio.Transform:
        """The TorchIO transform."""
        return self.op.step

    @property
    def kind(self) -> str:
        """The op's kind."""
        return self.op.kind


class PatchOp:
    """Base of the per-patch ops. Subclasses set ``kind`` and ``transforms`` and override
    :meth:`params` (and, per kind, the methods of :class:`.spatial.SpatialOp` or
    :class:`.intensity.IntensityOp`).

    Args:
        step: The TorchIO transform (one of ``transforms``, exact type).

    Example:
        >>> from pyable_tio.patching.ops.registry import op_for
        >>> op = op_for(tio.RandomGamma())
        >>> op.kind, type(op).__name__
        ('pointwise', 'GammaOp')
    """

    kind: ClassVar[str]
    transforms: ClassVar[tuple[type, ...]] = ()
    #: Step arguments whose dict form (one value per image) is not supported per patch.
    per_image_arguments: ClassVar[tuple[str, ...]] = ('gamma', 'std', 'coefficients', 'order', 'mean', 'seed')

    def __init__(self, step: tio.Transform) -> None:
        self.step = step

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.step!r})'

    def volume_reason(self) -> str | None:
        """Why this step must run on the whole volume after all (None: it runs per patch)."""
        name = type(self.step).__name__
        if getattr(self.step, 'keep', None):
            return f'{name} keeps a copy of an image (keep=)'
        for argument in self.per_image_arguments:
            if isinstance(getattr(self.step, argument, None), dict):
                return f'{name} has per-image {argument}'
        return None

    def draw(self, subject: tio.Subject, channels: dict[str, int], generator: torch.Generator) -> Drawn | None:
        """The step with its parameters drawn from ``generator``; None when it does not fire.

        The step's probability is drawn first, as TorchIO does, then :meth:`params`.

        Args:
            subject: The (unloaded) subject, to pick the images the step applies to.
            channels: Number of channels per image name.
            generator: The subject's generator.
        """
        if torch.rand(1, generator=generator).item() > self.step.probability:
            return None
        intensity_only = isinstance(self.step, tio.IntensityTransform)
        names = list(subject.get_images_dict(intensity_only=intensity_only, include=self.step.include,
                                             exclude=self.step.exclude))
        params = self.params(names, channels, generator)
        return None if params is None else Drawn(self, names, params)

    def params(self, names: list[str], channels: dict[str, int], generator: torch.Generator) -> dict[str, Any] | None:
        """The drawn parameters (TorchIO's distributions); None: the step does nothing."""
        raise NotImplementedError

    def margin(self, drawn: Drawn, affine: np.ndarray) -> np.ndarray:
        """Voxels (D, H, W) this step reads beyond a region (blur kernels); zero by default."""
        return np.zeros(3, dtype=int)

    def batchable(self) -> bool:
        """True when the step also runs on a collated batch, on the training device
        (:mod:`pyable_tio.patching.batch`): spatial steps as a matrix of one batched sampling
        grid, intensity steps as :meth:`~.intensity.IntensityOp.apply_batch`. False by default:
        the step then runs per patch in the loader's workers."""
        return False


def uniform(generator: torch.Generator) -> Callable[[float, float], float]:
    """``RandomTransform.sample_uniform`` from ``generator``: one float32 uniform in [a, b)."""
    return lambda a, b: torch.empty(1).uniform_(float(a), float(b), generator=generator).item()


def sextet(generator: torch.Generator) -> Callable[[Any], list[float]]:
    """Three uniforms from a TorchIO range sextet (a0, b0, a1, b1, a2, b2)."""
    draw = uniform(generator)
    return lambda ranges: [draw(a, b) for a, b in zip(ranges[::2], ranges[1::2])]
