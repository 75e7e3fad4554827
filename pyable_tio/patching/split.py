"""Which steps of a transform run per patch, and which need the whole volume.

:func:`plan_transform` splits a transform (a ``tio.Compose`` is flattened) into a volume-level
prefix, run on the loaded subject as TorchIO runs it, and a patch-local suffix, run by
:mod:`pyable_tio.patching.augment` on the patch's box only (each step as its op,
:mod:`pyable_tio.patching.ops`). A step is patch-local when its value
at a voxel depends on a bounded neighbourhood of the source (spatial steps: the preimage of the
patch; blur: the kernel) or on whole-volume statistics computed once per volume
(:mod:`pyable_tio.patching.stats`). Only the registered types (exact types) run per patch
(:mod:`pyable_tio.patching.ops.registry`): a subclass or an unknown callable may do anything,
so it runs on the whole volume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torchio as tio

from ..transforms.compose import Compose
from ..transforms.layout import FromTorchIO2D, ToTorchIO2D, ToZYX
from .ops.base import FIELD, SPATIAL, STATISTICS, PatchOp
from .ops.registry import op_for

logger = logging.getLogger('pyable_tio')

_logged: set[str] = set()


@dataclass(frozen=True)
class TransformPlan:
    """A transform split into whole-volume steps (first) and per-patch steps (then).

    Attributes:
        volume_steps: Steps run on the loaded subject, in order, before the patches are cut.
        patch_steps: Steps run on each patch's box, in order.
        patch_ops: Their ops (:mod:`pyable_tio.patching.ops`), in the same order.
        reason: Why the volume steps cannot run per patch (names the step); None when all
            steps run per patch.
        batch_steps: The suffix of ``patch_steps`` that runs on the collated batch, on the
            training device (:func:`pyable_tio.patch_loader` with ``device=``); the steps before
            it run per patch in the loader's workers. Empty without a device.
        device: The device the batch steps run on (None: no batch steps).

    Example:
        >>> plan = plan_transform(tio.Compose([tio.RandomMotion(), tio.RandomAffine()]))
        >>> [type(s).__name__ for s in plan.volume_steps], [type(s).__name__ for s in plan.patch_steps]
        (['RandomMotion'], ['RandomAffine'])
    """

    volume_steps: tuple[Callable, ...]
    patch_steps: tuple[tio.Transform, ...]
    reason: str | None = None
    patch_ops: tuple[PatchOp, ...] = field(default=(), compare=False, repr=False)
    batch_steps: tuple[tio.Transform, ...] = ()
    device: str | None = None

    def __post_init__(self) -> None:
        if len(self.patch_ops) != len(self.patch_steps):  # a plan built by hand
            object.__setattr__(self, 'patch_ops', tuple(op_for(step) for step in self.patch_steps))

    @property
    def batch_ops(self) -> tuple[PatchOp, ...]:
        """The ops of :attr:`batch_steps`."""
        return self.patch_ops[len(self.patch_ops) - len(self.batch_steps):]

    @property
    def resamples(self) -> bool:
        """True when a per-patch step moves voxels (the engines resample)."""
        return any(op.kind == SPATIAL for op in self.patch_ops)

    @property
    def per_patch(self) -> bool:
        """True when there are steps and every one runs per patch."""
        return not self.volume_steps and bool(self.patch_steps)

    def table(self) -> str:
        """One line per step: ``per patch`` or ``per volume`` and the step."""
        rows = [f'per volume  {_name(step)}' for step in self.volume_steps]
        on_patch = len(self.patch_steps) - len(self.batch_steps)
        rows += [f'per patch   {_name(step)}' for step in self.patch_steps[:on_patch]]
        rows += [f'on batch    {_name(step)} ({self.device})' for step in self.batch_steps]
        if self.reason:
            rows.append(f'(volume path because {self.reason})')
        return '\n'.join(rows) if rows else '(no transform)'

    def __str__(self) -> str:
        return self.table()


def plan_transform(transform: Callable | None, device: Any = None) -> TransformPlan:
    """Tell which steps of ``transform`` run per patch, on the batch, and on the whole volume.

    ``tio.Compose`` (probability 1) is flattened; the layout guard (:class:`ToZYX`, and the
    2-D layout switch :func:`pyable_tio.transforms.layout.in_torchio_layout` wraps TorchIO
    steps in) is dropped from the patch steps, which never reorder axes. The patch steps are the longest suffix
    whose steps are all patch-local, whose spatial steps are consecutive (later flips excepted:
    they reverse the finished patch, unless a ``RandomBiasField`` follows them) and whose
    statistics-based steps (``ZNormalization``, ``RescaleIntensity``) see only spatial steps
    before them (their statistics are the volume's); everything before it runs per volume.

    With a ``device`` (as :func:`pyable_tio.patch_loader` takes it), the longest suffix of
    the patch steps whose ops run on a batch (affine, flips, gamma, noise, clamp, bias field and
    the statistics-based normalisations) is moved to the collated batch on that device; when
    some patch steps must stay per patch (elastic, blur), the batch takes only the
    steps after the last resampling.

    Args:
        transform: A TorchIO transform, any callable taking a subject, or None.
        device: The training device of :func:`pyable_tio.patch_loader` (``"cuda"``,
            ``"cpu"``, a ``torch.device``); None: no batch steps.

    Returns:
        The :class:`TransformPlan`.

    Example:
        >>> import torchio as tio
        >>> import pyable_tio as pt
        >>> print(pt.plan_transform(tio.Compose([tio.RandomAffine(degrees=10), tio.RandomGamma()])))
        per patch   RandomAffine
        per patch   RandomGamma
    """
    if transform is None:
        return TransformPlan((), ())
    steps = _flatten(transform)
    guard_free = [step for step in steps if not isinstance(step, ToZYX)]
    ops = [op_for(step) for step in guard_free]
    reasons = [_volume_reason(step, op) for step, op in zip(guard_free, ops)]
    start = max((i + 1 for i, reason in enumerate(reasons) if reason), default=0)
    reason = reasons[start - 1] if start else None
    while start < len(guard_free) and (problem := _suffix_problem(ops[start:])):
        reason = reason or problem
        start += 1
    volume = tuple(guard_free[:start])
    if volume and any(isinstance(step, ToZYX) for step in steps):
        volume = (*volume, ToZYX())
    patch_ops = tuple(ops[start:])
    batch = batch_split(patch_ops) if device is not None else len(patch_ops)
    return TransformPlan(volume, tuple(guard_free[start:]), reason, patch_ops,
                         tuple(op.step for op in patch_ops[batch:]), None if device is None else str(device))


def batch_split(ops: Sequence[PatchOp]) -> int:
    """Index of the first of ``ops`` that runs on the batch (``len(ops)``: none does).

    The batch takes the longest suffix of batchable ops (:meth:`PatchOp.batchable`). When steps
    stay per patch before it, the batch receives finished patches, not boxes: it then takes
    only the steps after the last resampling one (flips, which only reorder voxels, stay).

    Example:
        >>> batch_split([op_for(tio.RandomElasticDeformation()), op_for(tio.RandomAffine()), op_for(tio.RandomGamma())])
        2
    """
    index = len(ops)
    while index > 0 and ops[index - 1].batchable():
        index -= 1
    if index > 0:
        while index < len(ops) and any(op.kind == SPATIAL and not op.reorders_only for op in ops[index:]):
            index += 1
    return index


def log_fallback(plan: TransformPlan) -> None:
    """Log (once per reason) that a transform falls back to the whole-volume path."""
    if plan.reason and plan.reason not in _logged:
        _logged.add(plan.reason)
        logger.warning('pyable-tio: transform steps run on whole volumes because %s:\n%s', plan.reason, plan.table())


def spatial_run(kinds: Sequence[str]) -> tuple[int, int]:
    """Start and stop of the first run of consecutive spatial steps (both ``len(kinds)`` without one).

    Per patch this run is resampled once; only flips may follow it (they reverse the finished patch).

    Example:
        >>> from pyable_tio.patching.ops.base import POINTWISE, SPATIAL
        >>> spatial_run([POINTWISE, SPATIAL, SPATIAL, POINTWISE, SPATIAL])
        (1, 3)
    """
    start = next((i for i, k in enumerate(kinds) if k == SPATIAL), len(kinds))
    stop = start
    while stop < len(kinds) and kinds[stop] == SPATIAL:
        stop += 1
    return start, stop


def _flatten(transform: Callable) -> list[Any]:
    if type(transform) in (tio.Compose, Compose):
        if transform.probability < 1:
            return [transform]
        return [step for inner in transform.transforms for step in _flatten(inner)]
    if isinstance(transform, (ToTorchIO2D, FromTorchIO2D)):
        # The guard's 2-D layout switch: a no-op on 3-D subjects, and 2-D subjects never run
        # spatial steps per patch (SubjectPatches runs the whole guarded transform on them).
        return []
    return [transform]


def _volume_reason(step: Any, op: PatchOp | None) -> str | None:
    """Why ``step`` must run on the whole volume, or None when it can run per patch."""
    if op is None:
        return f'{_name(step)} is not a patch-local TorchIO transform'
    return op.volume_reason()


def _suffix_problem(ops: list[PatchOp]) -> str | None:
    """Why the steps of ``ops`` cannot all run per patch (None when they can)."""
    steps = [op.step for op in ops]
    kinds = [op.kind for op in ops]
    spatial = [i for i, k in enumerate(kinds) if k == SPATIAL]
    end = spatial_run(kinds)[1]
    # After the first run of spatial steps only flips may come: they reverse the finished patch.
    later = [i for i in spatial if i >= end]
    resampling = next((i for i in later if not ops[i].reorders_only), None)
    if resampling is not None:
        # One resampling per patch: the spatial steps must be consecutive.
        between = next(steps[i] for i in range(end, resampling) if kinds[i] != SPATIAL)
        return f'{_name(between)} sits between spatial steps (they are resampled once per patch)'
    field_ = next((i for i in range(later[0] + 1, len(steps)) if kinds[i] == FIELD), None) if later else None
    if field_ is not None:
        # A field in volume coordinates would see the flip, which per patch comes last.
        return (f'{_name(steps[field_])} follows {_name(steps[later[0]])}: per patch, flips after'
                ' intensity steps are applied last, so put the flip after it')
    for i, k in enumerate(kinds):
        earlier = next((steps[j] for j in range(i) if kinds[j] not in (SPATIAL, STATISTICS)), None)
        if k == STATISTICS and earlier is not None:
            # Its statistics would be those of a volume the earlier step changed.
            return (f'{_name(steps[i])} follows {_name(earlier)}: per patch, statistics are the source'
                    ' volume\'s, so put it first')
    return None


def _name(step: Any) -> str:
    return type(step).__name__ if not callable(step) or hasattr(step, '__dict__') else repr(step)
