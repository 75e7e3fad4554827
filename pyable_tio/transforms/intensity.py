"""Intensity transforms of the seed, as TorchIO transforms."""

from __future__ import annotations

import torch
import torchio as tio
from torchio.transforms.preprocessing.intensity.normalization_transform import NormalizationTransform

from ..errors import describe


class IntensityNormalization(NormalizationTransform):
    """Per-channel z-score of every intensity image, optionally over the voxels of a named ROI.

    Unlike ``tio.ZNormalization`` (one mean/std for all channels of an image), each channel of a
    stacked ``images`` tensor (C x D x H x W) gets its own mean and standard deviation. Label maps
    and ROIs are not touched.

    Args:
        mask: Subject key of a ROI or label map (e.g. ``"roi_0"``); statistics use its voxels > 0.
            ``None`` uses every voxel, and so does an all-zero mask: the filler that
            ``missing="empty"`` gives a subject without that ROI means "no mask, whole image".
        **kwargs: See ``tio.Transform``.

    Raises:
        ValueError: ``mask`` is not a key of the subject, or a channel is constant over it
            (the message names the subject, image and channel).

    Example:
        >>> from pyable_tio.transforms import IntensityNormalization
        >>> normalized = IntensityNormalization(mask='roi_0')(subject)  # doctest: +SKIP
        >>> normalized['images'].data[0][subject['roi_0'].data[0] > 0].mean()  # ~0  # doctest: +SKIP
    """

    def __init__(self, mask: str | None = None, **kwargs):
        super().__init__(masking_method=mask, **kwargs)
        self.mask = mask
        self.args_names = ['mask']

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        self.check_mask(subject)
        return super().apply_transform(subject)

    def check_mask(self, subject: tio.Subject) -> None:
        """Raise ``ValueError`` (naming the subject and its keys) when ``mask`` is not a subject key.

        Example:
            >>> IntensityNormalization().check_mask(tio.Subject(t=tio.ScalarImage(tensor=torch.ones(1, 2, 2, 2))))
        """
        if self.mask is not None and self.mask not in subject:
            keys = sorted(subject.get_images_dict(intensity_only=False))
            problem = f'mask "{self.mask}" is not a subject key; keys are {keys}'
            raise ValueError(describe(subject.get('id'), 'IntensityNormalization', problem))

    def apply_normalization(self, subject: tio.Subject, image_name: str, mask: torch.Tensor) -> None:
        """Z-score each channel of ``subject[image_name]`` with the statistics inside ``mask``."""
        image = subject[image_name]
        data = image.data.float()
        normalized = torch.empty_like(data)
        for channel, (mean, std) in enumerate(self.channel_statistics(subject, image_name, mask)):
            normalized[channel] = (data[channel] - mean) / std
        image.set_data(normalized)

    def channel_statistics(self, subject: tio.Subject, image_name: str, mask: torch.Tensor) -> list[tuple[float, float]]:
        """Mean and standard deviation of each channel of ``subject[image_name]`` inside ``mask``.

        Per-patch augmentation normalises each patch with these whole-volume statistics.

        Raises:
            ValueError: a channel is constant over the mask (names subject, image and channel).

        Example:
            >>> step = IntensityNormalization()
            >>> subject = tio.Subject(t=tio.ScalarImage(tensor=torch.arange(8.).reshape(1, 2, 2, 2)))
            >>> [(m, round(s, 3)) for m, s in step.channel_statistics(subject, 't', torch.ones(1, 2, 2, 2))]
            [(3.5, 2.449)]
        """
        data = subject[image_name].data.float()
        mask = mask.bool()
        if not mask.any():
            # An all-zero mask is missing="empty"'s filler for a subject without this ROI.
            mask = torch.ones_like(mask)
        if mask.shape[0] == 1 and data.shape[0] > 1:
            mask = mask.expand_as(data)
        statistics = []
        for channel, (values, inside) in enumerate(zip(data, mask)):
            selected = values[inside]
            std = selected.std() if selected.numel() > 1 else torch.tensor(0.0)
            if not torch.isfinite(std) or std == 0:
                where = f'image "{image_name}" channel {channel}'
                problem = (
                    f'cannot z-score: {selected.numel()} voxels in mask {self.mask!r}'
                    f' with standard deviation {float(std)}'
                )
                raise ValueError(describe(subject.get('id'), where, problem))
            statistics.append((float(selected.mean()), float(std)))
        return statistics
