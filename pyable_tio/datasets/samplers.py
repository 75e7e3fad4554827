"""TorchIO's label and weighted samplers, with errors that name the subject and the label map.

Example:
    >>> sampler = LabelSampler((8, 16, 16), label_name='labelmap_0')
    >>> isinstance(sampler, tio.LabelSampler)
    True
"""

from __future__ import annotations

import numpy as np
import torch
import torchio as tio

from ..checking.labels import EMPTY_MAP_ERROR, empty_map_message


class _NamedEmptyMap:
    """TorchIO's ``process_probability_map``, with an empty map's error naming subject, map and file."""

    def process_probability_map(self, probability_map: torch.Tensor, subject: tio.Subject) -> np.ndarray:
        """TorchIO's, with an empty map's error naming the subject, the map and its file."""
        try:
            return super().process_probability_map(probability_map, subject)
        except RuntimeError as error:
            if EMPTY_MAP_ERROR not in str(error) or 'id' not in subject:
                raise  # a patch queue's one-image subject: the queue names the subject
            raise RuntimeError(empty_map_message(subject, self)) from None


class LabelSampler(_NamedEmptyMap, tio.LabelSampler):
    """``tio.LabelSampler`` whose "empty probability map" error names subject, label map and file.

    Example:
        >>> LabelSampler(16, label_name='roi_0').probability_map_name
        'roi_0'
    """


class WeightedSampler(_NamedEmptyMap, tio.WeightedSampler):
    """``tio.WeightedSampler`` whose "empty probability map" error names subject, map and file.

    Example:
        >>> WeightedSampler(16, probability_map='roi_0').probability_map_name
        'roi_0'
    """
