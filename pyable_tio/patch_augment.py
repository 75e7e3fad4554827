"""Per-patch augmentation: TorchIO's steps on the patch's box only, one resampling, then the crop.

For one patch at ``start`` (D, H, W voxel index of the volume) the drawn steps split into
intensity steps before the spatial ones (run on the source box), the spatial steps (composed
into one SimpleITK transform, resampled once onto the patch grid) and intensity steps after
them (run on the patch grid, widened by their kernels). The box is the preimage of the patch
under the composed transform: the mapped corners of the output region, plus the largest
elastic displacement, plus the interpolator's support, clipped to the volume. So a value
inside the patch comes from padding exactly where the whole-volume transform pads.

Geometry, stated once:
- ``Affine``/``RandomAffine`` (``center='image'``) rotate and scale about the **patch centre**
  (TorchIO rotates about the volume centre; ``center='origin'`` keeps the world origin).
  Built with TorchIO's own ``Affine._get_scaling_transform``/``_get_rotation_transform``.
- Flips reflect about the patch centre: the flipped patch is the patch at the mirrored
  location of the flipped volume. Flips after intensity steps (nnU-Net mirrors last) reverse
  the finished patch, with no interpolation.
- ``RandomElasticDeformation`` draws its control points on the **whole volume's** grid (the
  B-spline domain is the volume's, as ``BSplineTransformInitializer`` sets it for the whole
  image), so the physical control-point spacing is the volume's; only the patch is evaluated.
- ``RandomBiasField`` is evaluated at the patch's voxels in volume coordinates.
- Statistics (``ZNormalization``, ``RescaleIntensity``, pad values) are the whole volume's
  (:mod:`pyable_tio.volume_stats`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio
from torchio.constants import INTENSITY, TYPE
from torchio.transforms.augmentation.spatial.random_elastic_deformation import SPLINE_ORDER

from . import volume_stats
from .constants import INTERPOLATION_SUPPORT, INTERPOLATION_SUPPORT_DEFAULT
from .geometry.grid import LPS_TO_RAS, ras_affine_to_grid
from .patch_draw import Drawn, draw
from .patch_intensity import apply_intensity, kernel_margin
from .patch_plan import SPATIAL, spatial_run
from .transforms.intensity import IntensityNormalization


def augment_patch(steps: Sequence[tio.Transform], subject: tio.Subject, volumes: dict[str, Any],
                  start: Sequence[int], size: Sequence[int],
                  generator: torch.Generator) -> tuple[dict[str, torch.Tensor], list[tio.Transform]]:
    """The patch of every image after ``steps``, each C x D x H x W (Z,Y,X) on the patch grid.

    Args:
        steps: Patch-local steps (``plan_transform(T).patch_steps``).
        subject: The subject (its images need not be loaded).
        volumes: Image name -> :class:`pyable_tio.patch_cutting.Volume`.
        start: Patch start (D, H, W voxel index).
        size: Patch size (D, H, W).
        generator: Draws the steps' random parameters.

    Returns:
        The patch tensors by image name, and the steps applied (not skipped by their probability).

    Example:
        >>> augment_patch(plan.patch_steps, subject, volumes, (0, 8, 8), (32, 32, 32), generator)  # doctest: +SKIP
    """
    first = next(iter(volumes.values()))
    shape = np.array(first.shape)
    start, size = np.asarray(start, int), np.asarray(size, int)
    channels = {name: volume.channels for name, volume in volumes.items()}
    drawn = [d for d in (draw(step, subject, channels, generator) for step in steps) if d is not None]
    lo_index, hi_index = spatial_run([d.kind for d in drawn])
    pre, spatial = drawn[:lo_index], drawn[lo_index:hi_index]
    post = [d for d in drawn[hi_index:] if d.kind != SPATIAL]
    flips = [d for d in drawn[hi_index:] if d.kind == SPATIAL]  # only flips (plan_transform): last

    out_start = np.maximum(start - kernel_margin(post, first.affine), 0)
    out_stop = np.minimum(start + size + kernel_margin(post, first.affine), shape)
    maps, composed = {}, {}
    for name, volume in volumes.items():
        # Images on one grid under the same steps share one composed transform.
        key = (tuple(name in d.names for d in spatial), np.asarray(volume.affine).tobytes())
        if key not in composed:
            composed[key] = _composite(spatial, name, volume, start, size, shape)
        if composed[key] is not None:
            maps[name] = composed[key]
    box_start, box_stop = out_start.copy(), out_stop.copy()
    for name, (transform, bound_transform, displacement) in maps.items():
        lo, hi = _preimage(bound_transform, displacement, volumes[name].affine, out_start, out_stop)
        support = _support(spatial, name, volumes[name])
        box_start = np.minimum(box_start, np.floor(lo).astype(int) - support)
        box_stop = np.maximum(box_stop, np.ceil(hi).astype(int) + support + 1)
    pre_margin = kernel_margin(pre, first.affine)
    box_start = np.clip(box_start - pre_margin, 0, shape - 1)
    box_stop = np.maximum(np.clip(box_stop + pre_margin, 0, shape), box_start + 1)

    context = _Context(subject, volumes, shape, generator)
    if pre:
        boxes = {name: volume.crop(tuple(box_start), tuple(box_stop)) for name, volume in volumes.items()}
        for step in pre:
            apply_intensity(step, boxes, box_start, context)
        region = (slice(None), *(slice(a - b, c - b) for a, b, c in zip(out_start, box_start, out_stop)))
        channels_of, unmoved = (lambda name: list(boxes[name].numpy())), (lambda name: boxes[name][region])
    else:  # the box is resampled straight from the arrays (memory maps): one copy fewer
        channels_of = lambda name: volumes[name].channel_views(box_start, box_stop)  # noqa: E731
        unmoved = lambda name: volumes[name].crop(tuple(out_start), tuple(out_stop))  # noqa: E731
    tensors = {}
    for name, volume in volumes.items():
        if name in maps:
            tensors[name] = _resample(channels_of(name), volume, box_start, out_start, out_stop, maps[name][0],
                                      *_pads(spatial, name, volume, context))
        else:
            tensors[name] = unmoved(name)
    for step in post:
        apply_intensity(step, tensors, out_start, context)
    offset = start - out_start
    patch = tuple(slice(a, a + n) for a, n in zip(offset, size))
    patches = {name: tensor[(slice(None), *patch)].contiguous() for name, tensor in tensors.items()}
    for d in flips:
        for name in d.names:
            axes = _flipped(d, volumes[name])
            if axes:
                patches[name] = torch.flip(patches[name], [1 + a for a in axes])
    return patches, [d.step for d in drawn]


class _Context:
    """What statistics-based steps need: the volumes, their grid shape and the generator."""

    def __init__(self, subject: tio.Subject, volumes: dict[str, Any], shape: np.ndarray,
                 generator: torch.Generator) -> None:
        self.subject, self.volumes, self.shape, self.generator = subject, volumes, shape, generator

    def minima(self, name: str) -> list[float]:
        volume = self.volumes[name]
        return self._kept(volume, 'min', lambda: volume_stats.channel_minima(volume.read()))

    def border_means(self, name: str, otsu: bool) -> list[float]:
        volume = self.volumes[name]
        return self._kept(volume, 'otsu' if otsu else 'mean',
                          lambda: volume_stats.border_means(volume.read(), volume.affine, otsu))

    def normalization(self, step: tio.Transform, name: str) -> dict[str, Any]:
        volume = self.volumes[name]
        if isinstance(step, IntensityNormalization):
            step.check_mask(self.subject)
        mask = step.masking_method if isinstance(step.masking_method, str) and step.masking_method in self.volumes else None
        parts = [volume] + ([self.volumes[mask]] if mask else [])

        def compute() -> dict[str, Any]:
            images = {name: volume} | ({mask: self.volumes[mask]} if mask else {})
            whole = tio.Subject({n: type(v.image)(tensor=v.read(), affine=v.affine) for n, v in images.items()})
            return volume_stats.normalization_statistics(step, whole, name)

        return self._kept(parts, repr(step), compute)

    @staticmethod
    def _kept(volumes: Any, statistic: str, compute: Any) -> Any:
        """A statistic kept per process for cached/unloaded volumes, per subject for loaded ones."""
        volumes = volumes if isinstance(volumes, list) else [volumes]
        keys = [volume_stats.volume_key(v.image) for v in volumes]
        if None not in keys:
            images = [v.image for v in volumes]
            return volume_stats.remembered((tuple(keys), statistic),
                                           lambda: volume_stats.stored(images, statistic, compute))
        memo = volumes[0].statistics  # a loaded (transformed) volume: its statistics change every draw
        if statistic not in memo:
            memo[statistic] = compute()
        return memo[statistic]


# ----------------------------------------------------------------------------- spatial steps


def _lps_affine(affine: np.ndarray) -> np.ndarray:
    lps = np.array(affine, dtype=np.float64)
    lps[:3] = LPS_TO_RAS @ lps[:3]  # the flip of x and y is its own inverse
    return lps


def _step_transform(d: Drawn, volume: Any, start: np.ndarray, size: np.ndarray,
                    shape: np.ndarray) -> tuple[sitk.Transform | None, float]:
    """The output-to-input LPS transform of one drawn spatial step, and its largest displacement (mm)."""
    lps = _lps_affine(volume.affine)
    if d.kind == SPATIAL and 'scales' in d.params:
        centre = None
        if d.step.center == 'image':
            centre = tuple(float(v) for v in lps[:3, :3] @ (start + (size - 1) / 2) + lps[:3, 3])
        scaling = tio.Affine._get_scaling_transform(d.params['scales'], center_lps=centre)
        rotation = tio.Affine._get_rotation_transform(d.params['degrees'], d.params['translation'], center_lps=centre)
        transform = sitk.CompositeTransform([scaling, rotation]).GetInverse()  # as tio.Affine
        return (transform.GetInverse() if d.params['invert'] else transform), 0.0
    if 'axes' in d.params:
        flipped = _flipped(d, volume)
        if not flipped:
            return None, 0.0
        reflection, shift = np.eye(3), np.zeros(3)
        for a in flipped:  # index a -> (2 start_a + size_a - 1) - index a: about the patch centre
            reflection[a, a] = -1.0
            shift[a] = 2 * start[a] + size[a] - 1
        linear, origin = lps[:3, :3], lps[:3, 3]
        matrix = linear @ reflection @ np.linalg.inv(linear)
        translation = -matrix @ origin + linear @ shift + origin
        return sitk.AffineTransform(matrix.ravel().tolist(), translation.tolist()), 0.0
    control_points = np.array(d.params['control_points'], dtype=np.float64)
    if d.params['invert']:
        control_points = -control_points
    bspline = sitk.BSplineTransform(3, SPLINE_ORDER)
    mesh = tuple(int(n) - SPLINE_ORDER for n in control_points.shape[:-1])
    bspline.SetFixedParameters(_bspline_domain(volume.affine, tuple(int(n) for n in shape), mesh))
    bspline.SetParameters(control_points.flatten(order='F').tolist())
    # A cubic B-spline is a convex combination of its coefficients: |displacement| <= max |coefficient|.
    largest = float(np.linalg.norm(np.abs(control_points).reshape(-1, 3).max(axis=0)))
    return bspline, largest


def _bspline_domain(affine: np.ndarray, shape: tuple[int, int, int], mesh: tuple[int, ...]) -> tuple[float, ...]:
    """Fixed parameters of TorchIO's B-spline on the whole volume (``BSplineTransformInitializer``)."""
    key = ('bspline', np.asarray(affine, np.float64).tobytes(), shape, mesh)

    def compute() -> tuple[float, ...]:
        return tuple(sitk.BSplineTransformInitializer(volume_stats.sitk_grid(affine, shape), list(mesh))
                     .GetFixedParameters())

    return volume_stats.remembered(key, compute)


def _flipped(d: Drawn, volume: Any) -> list[int]:
    """The index axes (D, H, W) a drawn flip reverses on ``volume``."""
    axes = _flip_axes(d.params['axes'], volume)
    return [a for a in range(3) if d.params['hot'][a] and a in axes]


def _flip_axes(axes: Sequence[int | str], volume: Any) -> list[int]:
    """Index axes of ``axes`` (ints or anatomical names), as ``tio.Flip`` resolves them."""
    if not any(isinstance(a, str) for a in axes):
        return [int(a) for a in axes]

    def resolve() -> list[int]:
        probe = tio.ScalarImage(tensor=torch.zeros(1, 1, 1, 1), affine=volume.affine)
        return sorted(3 + probe.axis_name_to_index(a) if isinstance(a, str) else int(a) for a in axes)

    return volume_stats.remembered(('flip', tuple(axes), np.asarray(volume.affine).tobytes()), resolve)


def _composite(spatial: list[Drawn], name: str, volume: Any, start: np.ndarray, size: np.ndarray,
               shape: np.ndarray) -> tuple[sitk.Transform, sitk.Transform, float] | None:
    """Composed output-to-input transform of the steps applied to ``name``, a bounding copy
    without the elastic steps, and their largest displacement in mm (scaled by later maps)."""
    maps, bounds, displacement = [], [], 0.0
    for d in spatial:
        if name not in d.names:
            continue
        transform, largest = _step_transform(d, volume, start, size, shape)
        if transform is None:
            continue
        maps.append(transform)
        if largest:
            # Maps applied after this one (earlier steps) stretch its displacement at most by their norms.
            displacement += largest * np.prod([_norm(t) for t in bounds]) if bounds else largest
        else:
            bounds.append(transform)
    if not maps:
        return None
    bound = _as_affine(sitk.CompositeTransform(bounds)) if bounds else sitk.Transform(3, sitk.sitkIdentity)
    # Linear maps only: one AffineTransform, which ITK resamples on its fast (scan-line) path.
    return (bound if displacement == 0 else sitk.CompositeTransform(maps)), bound, displacement


def _as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """A composition of affine maps as one ``sitk.AffineTransform``."""
    points = np.array([transform.TransformPoint(tuple(p)) for p in np.vstack([np.zeros(3), np.eye(3)])])
    matrix = (points[1:] - points[0]).T
    return sitk.AffineTransform(matrix.ravel().tolist(), points[0].tolist())


def _norm(transform: sitk.Transform) -> float:
    """Operator norm of an affine transform's linear part."""
    return float(np.linalg.norm(np.asarray(_as_affine(transform).GetMatrix()).reshape(3, 3), 2))


def _preimage(transform: sitk.Transform, displacement: float, affine: np.ndarray, out_start: np.ndarray,
              out_stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Continuous source index bounds (D, H, W) of the output region's preimage."""
    lps = _lps_affine(affine)
    inverse = np.linalg.inv(lps[:3, :3])
    corners = np.array([[(a if bit else b - 1) for a, b, bit in zip(out_start, out_stop, bits)]
                        for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
    points = np.array([transform.TransformPoint(tuple(lps[:3, :3] @ c + lps[:3, 3])) for c in corners])
    indices = (points - lps[:3, 3]) @ inverse.T
    margin = displacement * np.linalg.norm(inverse, axis=1)
    return indices.min(axis=0) - margin, indices.max(axis=0) + margin


def _support(spatial: list[Drawn], name: str, volume: Any) -> int:
    label = volume.image[TYPE] != INTENSITY
    names = [getattr(d.step, 'label_interpolation' if label else 'image_interpolation', 'nearest')
             for d in spatial if name in d.names]
    return max([INTERPOLATION_SUPPORT.get(n, INTERPOLATION_SUPPORT_DEFAULT) for n in names] or [1])


def _pads(spatial: list[Drawn], name: str, volume: Any, context: _Context) -> tuple[str, list[float]]:
    """Interpolator name and per-channel pad value, from the first step that resamples ``name``."""
    label = volume.image[TYPE] != INTENSITY
    for d in spatial:
        if name not in d.names or 'axes' in d.params:
            continue
        interpolation = d.step.label_interpolation if label else d.step.image_interpolation
        if 'control_points' in d.params:  # ElasticDeformation pads every image with its minimum
            return interpolation, context.minima(name)
        if label:
            return interpolation, [float(d.step.default_pad_label)] * volume.channels
        pad = d.step.default_pad_value
        if pad == 'minimum':
            return interpolation, context.minima(name)
        if pad in ('mean', 'otsu'):
            return interpolation, context.border_means(name, pad == 'otsu')
        return interpolation, [float(pad)] * volume.channels
    return 'nearest', [0.0] * volume.channels  # flips only: every output voxel maps onto a voxel


def _resample(channels: list[np.ndarray], volume: Any, box_start: np.ndarray, out_start: np.ndarray,
              out_stop: np.ndarray, transform: sitk.Transform, interpolation: str, pads: list[float]) -> torch.Tensor:
    """Each channel of the box resampled onto the output region (labels keep their dtype)."""
    label = volume.image[TYPE] != INTENSITY
    resampler = sitk.ResampleImageFilter()
    if threading.current_thread() is not threading.main_thread():
        resampler.SetNumberOfThreads(1)  # the queue's threads already use every core
    output = ras_affine_to_grid(_shifted(volume.affine, out_start), out_stop - out_start)
    resampler.SetSize(output.size)
    resampler.SetOutputOrigin(output.origin)
    resampler.SetOutputSpacing(output.spacing)
    resampler.SetOutputDirection(output.direction)
    resampler.SetTransform(transform)
    resampler.SetInterpolator(tio.Transform.get_sitk_interpolator(interpolation))
    box = ras_affine_to_grid(_shifted(volume.affine, box_start), channels[0].shape)
    out = None
    for index, (channel, pad) in enumerate(zip(channels, pads)):
        # SimpleITK's index order is the array's reversed (W, H, D): a plain (strided) copy, no transpose.
        source = sitk.GetImageFromArray(channel)
        source.SetOrigin(box.origin)
        source.SetSpacing(box.spacing)
        source.SetDirection(box.direction)
        resampler.SetDefaultPixelValue(float(pad))
        resampler.SetOutputPixelType(source.GetPixelID() if label else sitk.sitkFloat32)
        resampled = resampler.Execute(source)  # kept alive while its array view is read
        view = sitk.GetArrayViewFromImage(resampled)
        if out is None:
            dtype = volume.patch_dtype() if label else view.dtype
            out = torch.from_numpy(np.empty((len(pads), *view.shape), dtype=dtype))
        out[index].numpy()[...] = view  # one copy, straight into the stacked tensor
        del view, resampled
    return out


def _shifted(affine: np.ndarray, start: np.ndarray) -> np.ndarray:
    shifted = np.array(affine, dtype=np.float64)
    shifted[:3, 3] = shifted[:3, :3] @ np.asarray(start, dtype=np.float64) + shifted[:3, 3]
    return shifted
