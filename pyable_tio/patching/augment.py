"""Per-patch augmentation: the ops on the patch's box only, one resampling, then the crop.

For one patch at ``start`` (D, H, W voxel index of the volume) the drawn steps split into
intensity steps before the spatial ones (run on the source box), the spatial steps (composed
into one output-to-input map, resampled once onto the patch grid) and intensity steps after
them (run on the patch grid, widened by their kernels). The box is the preimage of the patch
under the composed map: the mapped corners of the output region, plus the largest elastic
displacement, plus the interpolator's support, clipped to the volume. So a value inside the
patch comes from padding exactly where the whole-volume transform pads.

Two engines resample: ``"numba"`` (default, :mod:`.kernel`: one compiled pass per image,
the map evaluated once per output voxel and shared by the channels; a map that only flips
and shifts is a crop) and ``"sitk"`` (:mod:`.sitk_engine`, SimpleITK, the oracle). The
geometry of each step is its op's (:mod:`.ops.spatial`); flips after intensity steps (nnU-Net
mirrors last) reverse the finished patch. Statistics (``ZNormalization``,
``RescaleIntensity``, pad values) are the whole volume's (:mod:`.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio

from ..constants import PATCH_ENGINE_DEFAULT, PATCH_ENGINES
from ..geometry.grid import ras_affine_to_grid
from . import sitk_engine, stats
from .ops.base import SPATIAL, Drawn, PatchOp
from .ops.intensity import IntensityOp, StatisticsOp
from .ops.registry import op_for
from .ops.spatial import SpatialOp, as_crop, lps_affine, matrix_of
from .split import spatial_run
from .volume import Box, Volume

_kernel: ModuleType | None = None


def augment_patch(steps: Sequence[tio.Transform | PatchOp], subject: tio.Subject, volumes: dict[str, Volume],
                  start: Sequence[int], size: Sequence[int], generator: torch.Generator,
                  engine: str = PATCH_ENGINE_DEFAULT) -> tuple[dict[str, torch.Tensor], list[tio.Transform]]:
    """The patch of every image after ``steps``, each C x D x H x W (Z,Y,X) on the patch grid.

    Args:
        steps: Patch-local steps or their ops (``plan_transform(T).patch_ops``).
        subject: The subject (its images need not be loaded).
        volumes: Image name -> :class:`pyable_tio.patching.volume.Volume`.
        start: Patch start (D, H, W voxel index).
        size: Patch size (D, H, W).
        generator: Draws the steps' random parameters.
        engine: ``"numba"`` (compiled kernels) or ``"sitk"`` (SimpleITK, the oracle).

    Returns:
        The patch tensors by image name, and the steps applied (not skipped by their probability).

    Example:
        >>> augment_patch(plan.patch_ops, subject, volumes, (0, 8, 8), (32, 32, 32), generator)  # doctest: +SKIP
    """
    if engine not in PATCH_ENGINES:
        raise ValueError(f'engine must be one of {PATCH_ENGINES}, got {engine!r}')
    ops = [step if isinstance(step, PatchOp) else op_for(step) for step in steps]
    first = next(iter(volumes.values()))
    shape = np.array(first.shape)
    start, size = np.asarray(start, int), np.asarray(size, int)
    channels = {name: volume.channels for name, volume in volumes.items()}
    drawn = [d for d in (op.draw(subject, channels, generator) for op in ops) if d is not None]
    lo_index, hi_index = spatial_run([d.kind for d in drawn])
    pre, spatial = drawn[:lo_index], drawn[lo_index:hi_index]
    post = [d for d in drawn[hi_index:] if d.kind != SPATIAL]
    flips = [d for d in drawn[hi_index:] if d.kind == SPATIAL]  # only flips (plan_transform): last

    post_margin = _margin(post, first.affine)
    out_start = np.maximum(start - post_margin, 0)
    out_stop = np.minimum(start + size + post_margin, shape)
    maps = spatial_maps(spatial, volumes, start, size, shape, engine)
    box_start, box_stop = preimage_box(maps, spatial, volumes, out_start, out_stop, shape,
                                       _margin(pre, first.affine))

    context = PatchContext(subject, volumes, shape, generator)
    if pre:
        boxes = {name: volume.crop(tuple(box_start), tuple(box_stop)) for name, volume in volumes.items()}
        for d in pre:
            _apply(d, boxes, box_start, context)
        region = (slice(None), *(slice(a - b, c - b) for a, b, c in zip(out_start, box_start, out_stop)))
        box_of = lambda name: Box([boxes[name].numpy()], box_start, box_start, box_stop)  # noqa: E731
        unmoved = lambda name: boxes[name][region]  # noqa: E731
    else:  # the box is resampled straight from the arrays (memory maps): one copy fewer
        box_of = lambda name: volumes[name].box(box_start, box_stop)  # noqa: E731
        unmoved = lambda name: volumes[name].crop(tuple(out_start), tuple(out_stop))  # noqa: E731
    tensors = {}
    for name, volume in volumes.items():
        if name not in maps:
            tensors[name] = unmoved(name)
            continue
        interpolation, pads = pad_values(spatial, name, volume, context)
        tensors[name] = maps[name].resample(box_of(name), volume, out_start, out_stop, interpolation, pads)
    for d in post:
        _apply(d, tensors, out_start, context)
    offset = start - out_start
    patch = tuple(slice(a, a + n) for a, n in zip(offset, size))
    patches = {name: tensor[(slice(None), *patch)].contiguous() for name, tensor in tensors.items()}
    for d in flips:
        for name in d.names:
            axes = d.op.flipped(d, volumes[name])
            if axes:
                patches[name] = torch.flip(patches[name], [1 + a for a in axes])
    return patches, [d.step for d in drawn]


def spatial_maps(spatial: list[Drawn], volumes: dict[str, Volume], start: np.ndarray, size: np.ndarray,
                 shape: np.ndarray, engine: str) -> dict[str, SpatialMap]:
    """Each moved image's composed map (images the steps leave in place are absent).

    Images on one grid under the same steps share one :class:`SpatialMap` (and its fields).
    """
    maps, composed = {}, {}
    for name, volume in volumes.items():
        key = (tuple(name in d.names for d in spatial), np.asarray(volume.affine).tobytes())
        if key not in composed:
            steps_of = [d for d in spatial if name in d.names]
            composed[key] = SpatialMap.of(steps_of, volume, start, size, shape, engine)
        if composed[key] is not None:
            maps[name] = composed[key]
    return maps


def preimage_box(maps: dict[str, SpatialMap], spatial: list[Drawn], volumes: dict[str, Volume],
                 out_start: np.ndarray, out_stop: np.ndarray, shape: np.ndarray,
                 margin: np.ndarray | int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The box (start, stop; D, H, W) the output region reads: the region itself and the
    preimage under each map, widened by the interpolator's support and ``margin``, clipped to
    the volume (never empty)."""
    box_start, box_stop = np.array(out_start, int), np.array(out_stop, int)
    for name, mapped in maps.items():
        lo, hi = mapped.preimage(volumes[name].affine, out_start, out_stop)
        support = interpolation_support(spatial, name, volumes[name])
        box_start = np.minimum(box_start, np.floor(lo).astype(int) - support)
        box_stop = np.maximum(box_stop, np.ceil(hi).astype(int) + support + 1)
    box_start = np.clip(box_start - margin, 0, shape - 1)
    box_stop = np.maximum(np.clip(box_stop + margin, 0, shape), box_start + 1)
    return box_start, box_stop


def translation(offset: Sequence[float]) -> np.ndarray:
    """The 4 x 4 map of voxel indices ``i -> i + offset``."""
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


def _apply(d: Drawn, tensors: dict[str, torch.Tensor], region_start: np.ndarray, context: PatchContext) -> None:
    op: IntensityOp = d.op
    for name in d.names:
        tensors[name] = op.apply(d, tensors[name].float(), name, region_start, context)


def _margin(drawn: list[Drawn], affine: np.ndarray) -> np.ndarray:
    """Voxels (D, H, W) the steps of ``drawn`` read beyond a region (their kernels)."""
    return np.sum([d.op.margin(d, affine) for d in drawn] or [np.zeros(3, int)], axis=0).astype(int)


class PatchContext:
    """What statistics-based steps need: the volumes, their grid shape and the generator."""

    def __init__(self, subject: tio.Subject, volumes: dict[str, Volume], shape: np.ndarray,
                 generator: torch.Generator) -> None:
        self.subject, self.volumes, self.shape, self.generator = subject, volumes, shape, generator

    def minima(self, name: str) -> list[float]:
        """Each channel's whole-volume minimum of image ``name`` (kept once computed)."""
        volume = self.volumes[name]
        return self._kept(volume, 'min', lambda: stats.channel_minima(volume.read()))

    def border_means(self, name: str, otsu: bool) -> list[float]:
        """Each channel's whole-volume border mean (Otsu's background mean with ``otsu``), kept."""
        volume = self.volumes[name]
        return self._kept(volume, 'otsu' if otsu else 'mean',
                          lambda: stats.border_means(volume.read(), volume.affine, otsu))

    def normalization(self, op: StatisticsOp, name: str) -> dict[str, Any]:
        """The whole-volume statistics of ``op`` on image ``name`` (kept)."""
        step, volume = op.step, self.volumes[name]
        if hasattr(step, 'check_mask'):
            step.check_mask(self.subject)
        method = step.masking_method
        mask = method if isinstance(method, str) and method in self.volumes else None
        parts = [volume] + ([self.volumes[mask]] if mask else [])

        def compute() -> dict[str, Any]:
            images = {name: volume} | ({mask: self.volumes[mask]} if mask else {})
            whole = tio.Subject({n: type(v.image)(tensor=v.read(), affine=v.affine) for n, v in images.items()})
            return op.statistics(whole, name)

        return self._kept(parts, repr(step), compute)

    @staticmethod
    def _kept(volumes: Volume | list[Volume], statistic: str, compute: Any) -> Any:
        """A statistic kept per process for cached/unloaded volumes, per subject for loaded ones."""
        volumes = volumes if isinstance(volumes, list) else [volumes]
        keys = [stats.volume_key(v.image) for v in volumes]
        if None not in keys:
            images = [v.image for v in volumes]
            return stats.remembered((tuple(keys), statistic), lambda: stats.stored(images, statistic, compute))
        memo = volumes[0].statistics  # a loaded (transformed) volume: its statistics change every draw
        if statistic not in memo:
            memo[statistic] = compute()
        return memo[statistic]


# ----------------------------------------------------------------------------- spatial steps


@dataclass
class SpatialMap:
    """The composed output-to-input map of one image's spatial steps, for one engine.

    Attributes:
        engine: ``"numba"`` or ``"sitk"``.
        matrix: 4 x 4 map on volume voxel indices (linear steps only, numba engine), or None.
        transform: The composed SimpleITK transform (LPS mm): the sitk engine's, and the
            numba engine's when an elastic step makes the map a field.
        bound: Its linear part (the elastic steps left out), to bound the preimage.
        displacement: The elastic steps' largest displacement (mm), scaled by later maps.
        bspline: One elastic step as the kernel's data (index maps before and after it, its
            control grid and coefficients); None: no elastic step, or several (SimpleITK's field).
        fields: Coordinate fields already computed, by region (images on one map share them).
    """

    engine: str
    matrix: np.ndarray | None = None
    transform: sitk.Transform | None = None
    bound: sitk.Transform | None = None
    displacement: float = 0.0
    bspline: tuple | None = None
    fields: dict = field(default_factory=dict)

    @classmethod
    def of(cls, spatial: list[Drawn], volume: Volume, start: np.ndarray, size: np.ndarray, shape: np.ndarray,
           engine: str) -> SpatialMap | None:
        """The map of ``spatial`` (the steps applied to this image); None when it is the identity."""
        if engine == 'numba' and all(d.op.linear for d in spatial):
            matrix = None
            for d in spatial:
                step_map = d.op.index_map(d, volume, start, size, shape)
                if step_map is not None:  # output-to-input maps compose first step outermost
                    matrix = step_map if matrix is None else matrix @ step_map
            return None if matrix is None else cls(engine, matrix=matrix)
        maps, bounds, displacement, elastic = [], [], 0.0, []
        for index, d in enumerate(spatial):
            op: SpatialOp = d.op
            transform, largest = op.transform(d, volume, start, size, shape)
            if transform is None:
                continue
            maps.append(transform)
            if not op.linear:
                elastic.append((index, transform))
            if largest:
                # Maps applied after this one (earlier steps) stretch its displacement at most by their norms.
                displacement += largest * np.prod([_norm(t) for t in bounds]) if bounds else largest
            else:
                bounds.append(transform)
        if not maps:
            return None
        bound = _as_affine(sitk.CompositeTransform(bounds)) if bounds else sitk.Transform(3, sitk.sitkIdentity)
        # Linear maps only: one AffineTransform, which ITK resamples on its fast (scan-line) path.
        transform = bound if displacement == 0 else sitk.CompositeTransform(maps)
        mapped = cls(engine, transform=transform, bound=bound, displacement=displacement)
        if engine == 'numba' and len(elastic) == 1:
            mapped.bspline = _bspline_parts(spatial, *elastic[0], volume, start, size, shape)
        return mapped

    def preimage(self, affine: np.ndarray, out_start: np.ndarray, out_stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous source index bounds (D, H, W) of the output region's preimage."""
        corners = np.array([[(a if bit else b - 1) for a, b, bit in zip(out_start, out_stop, bits)]
                            for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
        if self.matrix is not None:
            indices = corners @ self.matrix[:3, :3].T + self.matrix[:3, 3]
            return indices.min(axis=0), indices.max(axis=0)
        lps = lps_affine(affine)
        inverse = np.linalg.inv(lps[:3, :3])
        points = np.array([self.bound.TransformPoint(tuple(lps[:3, :3] @ c + lps[:3, 3])) for c in corners])
        indices = (points - lps[:3, 3]) @ inverse.T
        margin = self.displacement * np.linalg.norm(inverse, axis=1)
        return indices.min(axis=0) - margin, indices.max(axis=0) + margin

    def resample(self, box: Box, volume: Volume, out_start: np.ndarray, out_stop: np.ndarray, interpolation: str,
                 pads: list[float]) -> torch.Tensor:
        """The output region of every channel (images float32, labels in their dtype), read from ``box``."""
        if self.engine == 'sitk' or interpolation not in ('linear', 'nearest'):
            if self.transform is None:  # an interpolator the kernels lack: the oracle resamples
                lps = lps_affine(volume.affine)
                self.transform = _affine_transform(lps @ self.matrix @ np.linalg.inv(lps))
            channels = [view[c] for view in box.views() for c in range(view.shape[0])]
            return sitk_engine.resample(channels, volume, box.start, out_start, out_stop, self.transform,
                                        interpolation, pads)
        kernel = _kernels()
        label = volume.label
        out = np.empty((volume.channels, *(out_stop - out_start)), dtype=volume.patch_dtype() if label else np.float32)
        bounds = (box.start - box.origin, box.stop - box.origin)  # in the arrays' index
        if self.matrix is not None:
            mapping = translation(-box.origin) @ self.matrix @ translation(out_start)
            crop = as_crop(mapping)
            if crop is not None and kernel.crop(box.arrays, bounds, *crop, out) is not None:
                return torch.from_numpy(out)  # flips and whole-voxel shifts: no interpolation
        else:  # one coordinate field per region, shared by the images on this map
            key = (box.origin.tobytes(), np.asarray(out_start).tobytes(), np.asarray(out_stop).tobytes())
            if key not in self.fields:
                self.fields[key] = self._coordinates(volume, box.origin, out_start, out_stop)
            mapping = self.fields[key]
        return torch.from_numpy(kernel.sample(box.arrays, bounds, mapping, out, pads, nearest=interpolation == 'nearest'))

    def _coordinates(self, volume: Volume, origin: np.ndarray, out_start: np.ndarray,
                     out_stop: np.ndarray) -> np.ndarray:
        """Source index (from ``origin``) of every output voxel (3 x d x h x w): the kernel's B-spline for
        one elastic step, else SimpleITK's displacement field of the composed transform."""
        if self.bspline is not None:
            before, to_grid, coefficients, linear_inverse, after = self.bspline
            return _kernels().bspline_coordinates(translation(-np.asarray(origin)) @ before, to_grid, coefficients,
                                                  linear_inverse, after @ translation(out_start),
                                                  tuple(int(n) for n in out_stop - out_start))
        lps = lps_affine(volume.affine)
        grid = ras_affine_to_grid(volume.affine_at(out_start), out_stop - out_start)
        vectors = sitk.TransformToDisplacementField(self.transform, sitk.sitkVectorFloat64, grid.size, grid.origin,
                                                  grid.spacing, grid.direction)
        displacement = sitk.GetArrayViewFromImage(vectors)  # d x h x w x 3 (LPS x, y, z)
        index = np.stack(np.meshgrid(*(np.arange(a, b, dtype=np.float64) for a, b in zip(out_start, out_stop)),
                                     indexing='ij'))
        # Output point + displacement, back to source indices: index + A^-1 displacement.
        inverse = np.linalg.inv(lps[:3, :3])
        coordinates = index + np.einsum('ij,dhwj->idhw', inverse, displacement)
        return coordinates - np.asarray(origin, np.float64)[:, None, None, None]


def _bspline_parts(spatial: list[Drawn], index: int, bspline: sitk.BSplineTransform, volume: Volume,
                   start: np.ndarray, size: np.ndarray, shape: np.ndarray) -> tuple:
    """The elastic step ``spatial[index]`` (its transform ``bspline``, already built) as data for the
    kernel's B-spline, between the index maps of the steps before and after it (4 x 4 each)."""
    def composed(steps: list[Drawn]) -> np.ndarray:
        matrix = np.eye(4)
        for d in steps:
            step_map = d.op.index_map(d, volume, start, size, shape)
            if step_map is not None:
                matrix = matrix @ step_map
        return matrix

    fixed = np.asarray(bspline.GetFixedParameters(), dtype=np.float64)
    grid_size = fixed[:3].astype(int)
    grid = np.eye(4)
    grid[:3, :3] = fixed[9:18].reshape(3, 3) @ np.diag(fixed[6:9])  # direction @ spacing
    grid[:3, 3] = fixed[3:6]
    coefficients = np.asarray(bspline.GetParameters(), dtype=np.float64).reshape(3, *grid_size[::-1])
    coefficients = coefficients.transpose(0, 3, 2, 1)  # ITK's x fastest: (component, x, y, z)
    lps = lps_affine(volume.affine)
    to_grid = np.linalg.inv(grid) @ lps
    return composed(spatial[:index]), to_grid, coefficients, np.linalg.inv(lps[:3, :3]), composed(spatial[index + 1:])


def _kernels() -> ModuleType:
    """The numba kernels, imported on first use (numba's import costs ~0.3 s that
    ``import pyable_tio`` and the CLI do not pay)."""
    global _kernel
    if _kernel is None:
        from . import kernel  # lazy for its cost (not a cycle)

        _kernel = kernel
    return _kernel


def warm_kernels() -> None:
    """Import numba and load (or compile) the kernels for the usual dtypes, ahead of the first patch."""
    _kernels().warm()


def _affine_transform(matrix: np.ndarray) -> sitk.AffineTransform:
    return sitk.AffineTransform(matrix[:3, :3].ravel().tolist(), matrix[:3, 3].tolist())


def _as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """A composition of affine maps as one ``sitk.AffineTransform``."""
    return _affine_transform(matrix_of(transform))


def _norm(transform: sitk.Transform) -> float:
    """Operator norm of an affine transform's linear part."""
    return float(np.linalg.norm(matrix_of(transform)[:3, :3], 2))


def interpolation_support(spatial: list[Drawn], name: str, volume: Volume) -> int:
    """Voxels an interpolator reads around a point of ``name`` (its box's margin), at least 1."""
    return max([d.op.support(volume.label) for d in spatial if name in d.names] or [1])


def pad_values(spatial: list[Drawn], name: str, volume: Volume, context: PatchContext) -> tuple[str, list[float]]:
    """Interpolator name and per-channel pad value, from the first step that resamples ``name``."""
    for d in spatial:
        if name in d.names and not d.op.reorders_only:
            return d.op.interpolation(volume.label), d.op.pads(d, name, volume, context)
    return 'nearest', [0.0] * volume.channels  # flips only: every output voxel maps onto a voxel
