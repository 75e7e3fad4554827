"""N4 bias-field correction (SimpleITK's ``N4BiasFieldCorrectionImageFilter``), for MR images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import SimpleITK as sitk

from ..constants import BRAIN_MASK, ROI_PREFIX
from .base import Masks, PreprocessStep

#: ``N4(mask=...)`` values that are not mask names: a foreground threshold, or every voxel.
MASK_OTSU = 'otsu'
#: Fewest voxels an axis keeps while the field is fitted on the shrunk image.
_MIN_SHRUNK_SIZE = 4


@dataclass(frozen=True)
class N4(PreprocessStep):
    """Divide an MR image by its smooth bias field, estimated by N4 (Tustison et al., 2010).

    The field is fitted on the image shrunk by ``shrink_factor`` (the cost falls with its
    cube) and evaluated at full resolution, so the output keeps the input's grid and
    detail. Images only: ROIs and label maps are never bias-corrected.

    Args:
        shrink_factor: Subsampling of the image (per axis) while the field is fitted; less
            along axes that would keep fewer than 4 voxels.
        iterations: Maximum iterations per fitting level; its length is the number of
            levels (each doubles the B-spline control points).
        convergence_threshold: Stops a level when the change falls below it.
        mask: Voxels the field is fitted on: ``"otsu"`` (default: the foreground by Otsu's
            threshold), ``"brain"`` (the mask of an earlier :class:`SkullStrip` step), an ROI
            key of the subject such as ``"roi_0"`` (taken in the ROI file's physical space,
            nearest-neighbour onto the image's voxels), or None (every voxel).

    Example:
        >>> import pyable_tio as pt
        >>> step = pt.N4(shrink_factor=4, iterations=(50, 50, 50), mask='brain')
        >>> step.key['name'], step.masks_needed()
        ('n4', ('brain',))
    """

    name: ClassVar[str] = 'n4'

    shrink_factor: int = 4
    iterations: tuple[int, ...] = (50, 50, 50, 50)
    convergence_threshold: float = 1e-3
    mask: str | None = MASK_OTSU

    def __post_init__(self) -> None:
        if isinstance(self.shrink_factor, bool) or not isinstance(self.shrink_factor, int) or self.shrink_factor < 1:
            raise ValueError(f'N4 shrink_factor must be an integer >= 1, got {self.shrink_factor!r}')
        iterations = tuple(self.iterations) if isinstance(self.iterations, (list, tuple)) else ()
        if not iterations or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in iterations):
            raise ValueError(f'N4 iterations must be a non-empty list of positive integers, got {self.iterations!r}')
        object.__setattr__(self, 'iterations', iterations)
        if not float(self.convergence_threshold) >= 0:
            raise ValueError(f'N4 convergence_threshold must be >= 0, got {self.convergence_threshold!r}')
        valid = self.mask in (None, MASK_OTSU, BRAIN_MASK) or (
            isinstance(self.mask, str) and self.mask.startswith(ROI_PREFIX)
        )
        if not valid:
            raise ValueError(
                f'N4 mask must be None, "{MASK_OTSU}", "{BRAIN_MASK}" or an ROI key such as'
                f' "{ROI_PREFIX}0", got {self.mask!r}'
            )

    def masks_needed(self) -> tuple[str, ...]:
        return () if self.mask in (None, MASK_OTSU) else (self.mask,)

    def __call__(self, image: sitk.Image) -> sitk.Image:
        if self.masks_needed():
            raise ValueError(f'N4(mask={self.mask!r}) needs the mask: call step.apply(image, masks)')
        return self.apply(image, {})[0]

    def apply(self, image: sitk.Image, masks: Masks) -> tuple[sitk.Image, dict[str, sitk.Image]]:
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f'N4 needs a scalar image, got {image.GetNumberOfComponentsPerPixel()} components')
        original = image
        image = sitk.Cast(image, sitk.sitkFloat32)
        mask = self._mask(image, masks)
        if not sitk.GetArrayViewFromImage(mask).any():
            raise ValueError(f'N4 mask {self.mask!r} is empty: no voxel to fit the bias field on')
        # A thin axis (few slices) is shrunk less: N4 needs a few voxels along every axis.
        shrink = [max(1, min(self.shrink_factor, size // _MIN_SHRUNK_SIZE)) for size in image.GetSize()]
        corrector = sitk.N4BiasFieldCorrectionImageFilter()
        corrector.SetMaximumNumberOfIterations(list(self.iterations))
        corrector.SetConvergenceThreshold(float(self.convergence_threshold))
        corrector.Execute(sitk.Shrink(image, shrink), sitk.Shrink(mask, shrink))
        # The B-spline field is defined everywhere: evaluate it on the full-resolution grid.
        log_field = corrector.GetLogBiasFieldAsImage(image)
        corrected = image / sitk.Exp(log_field)
        if original.GetPixelID() == sitk.sitkFloat64:
            corrected = sitk.Cast(corrected, sitk.sitkFloat64)
        return corrected, {}

    def _mask(self, image: sitk.Image, masks: Masks) -> sitk.Image:
        if self.mask is None:
            mask = sitk.Image(image.GetSize(), sitk.sitkUInt8)
            mask.CopyInformation(image)
            return mask + 1
        if self.mask == MASK_OTSU:
            # Otsu keeps the bright class: tissue, not the air around the head.
            return sitk.OtsuThreshold(image, 0, 1, 200)
        if self.mask not in masks:
            raise ValueError(
                f'N4(mask={self.mask!r}): no such mask here (available: {sorted(masks) or "none"});'
                f' "{BRAIN_MASK}" needs a SkullStrip step before N4'
            )
        mask = sitk.Cast(masks[self.mask] > 0, sitk.sitkUInt8)
        mask.CopyInformation(image)
        return mask
