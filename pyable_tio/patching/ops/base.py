"""Random parameters of per-patch steps, drawn as TorchIO draws them, from a given generator.

TorchIO's random transforms draw from torch's global generator; per-patch augmentation runs in
threads, where that stream would be shared and in no fixed order. So each step's parameters are
drawn here with TorchIO's distributions (``RandomTransform.sample_uniform``: float32 uniforms;
one draw per image, per channel for gamma; the step's probability first), from the subject's own
``torch.Generator``: the same seed gives the same patches whatever the number of threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchio as tio
from torchio.utils import to_tuple

from ..split import kind
from ...transforms.spatial import RandomFlip


@dataclass
class Drawn:
    """One step with its parameters fixed, for the images it applies to.

    Attributes:
        step: The TorchIO transform.
        kind: Its kind (:mod:`pyable_tio.patching.split` constants).
        names: Subject keys of the images it applies to (TorchIO's include/exclude and
            intensity-only rules).
        params: The drawn parameters (per step, or per image name under ``per_image``).
    """

    step: tio.Transform
    kind: str
    names: list[str]
    params: dict[str, Any] = field(default_factory=dict)


def draw(step: tio.Transform, subject: tio.Subject, channels: dict[str, int],
         generator: torch.Generator) -> Drawn | None:
    """``step`` with its random parameters drawn from ``generator``; None when skipped.

    Args:
        step: A supported TorchIO transform (see :func:`pyable_tio.plan_transform`).
        subject: The (unloaded) subject, to pick the images ``step`` applies to.
        channels: Number of channels per image name.
        generator: The subject's generator.

    Example:
        >>> draw(tio.RandomGamma(), subject, {'images': 2}, torch.Generator().manual_seed(0)).params  # doctest: +SKIP
        {'per_image': {'images': [0.93, 1.21]}}
    """
    if torch.rand(1, generator=generator).item() > step.probability:
        return None
    names = list(subject.get_images_dict(intensity_only=isinstance(step, tio.IntensityTransform),
                                         include=step.include, exclude=step.exclude))
    drawn = Drawn(step, kind(step), names)
    uniform = lambda a, b: torch.empty(1).uniform_(float(a), float(b), generator=generator).item()  # noqa: E731
    sextet = lambda ranges: [uniform(a, b) for a, b in zip(ranges[::2], ranges[1::2])]  # noqa: E731
    if isinstance(step, tio.RandomAffine):
        scales = sextet(step.scales)
        if step.isotropic:
            scales = [scales[0]] * 3
        drawn.params = {'scales': scales, 'degrees': sextet(step.degrees),
                        'translation': sextet(step.translation), 'invert': False}
    elif isinstance(step, tio.Affine):
        drawn.params = {'scales': list(step.scales), 'degrees': list(step.degrees),
                        'translation': list(step.translation), 'invert': bool(step.invert_transform)}
    elif isinstance(step, tio.RandomFlip):
        hot = (step.flip_probability > torch.rand(3, generator=generator)).tolist()
        drawn.params = {'axes': step.axes, 'hot': hot}
    elif isinstance(step, RandomFlip):  # pyable_tio's: one draw per listed D, H, W axis
        hot = [False] * 3
        for axis, value in zip(step.axes, torch.rand(len(step.axes), generator=generator).tolist()):
            hot[axis] = value < step.p_axis
        drawn.params = {'axes': list(step.axes), 'hot': hot}
    elif isinstance(step, tio.Flip):
        drawn.params = {'axes': step.axes, 'hot': [True] * 3}
    elif isinstance(step, tio.RandomElasticDeformation):
        if not any(step.max_displacement):
            return None
        field_ = torch.rand(*step.num_control_points, 3, generator=generator)
        field_ = (field_ - 0.5) * 2 * torch.as_tensor(step.max_displacement, dtype=torch.float32)
        for i in range(step.num_locked_borders):  # as RandomElasticDeformation.get_params
            field_[i, :] = 0
            field_[-1 - i, :] = 0
            field_[:, i] = 0
            field_[:, -1 - i] = 0
        drawn.params = {'control_points': field_.numpy(), 'invert': False}
    elif isinstance(step, tio.ElasticDeformation):
        if not any(step.max_displacement):
            return None
        drawn.params = {'control_points': np.asarray(step.control_points), 'invert': bool(step.invert_transform)}
    elif isinstance(step, tio.RandomGamma):
        drawn.params = {'per_image': {n: [math.exp(uniform(*step.log_gamma_range)) for _ in range(channels[n])]
                                      for n in names}, 'invert': False}
    elif isinstance(step, tio.Gamma):
        drawn.params = {'per_image': {n: list(to_tuple(step.gamma, length=channels[n])) for n in names},
                        'invert': bool(step.invert_transform)}
    elif isinstance(step, tio.RandomNoise):
        drawn.params = {'per_image': {n: (uniform(*step.mean_range), uniform(*step.std_range)) for n in names}}
    elif isinstance(step, tio.RandomBlur):
        drawn.params = {'per_image': {n: sextet(step.std_ranges) for n in names}}
    elif isinstance(step, tio.Blur):
        drawn.params = {'per_image': {n: list(to_tuple(step.std, length=3)) for n in names}}
    elif isinstance(step, tio.RandomBiasField):
        count = _bias_coefficients(step.order)
        drawn.params = {'per_image': {n: [uniform(*step.coefficients_range) for _ in range(count)] for n in names},
                        'order': step.order, 'invert': False}
    elif isinstance(step, tio.BiasField):
        drawn.params = {'per_image': {n: list(step.coefficients) for n in names}, 'order': step.order,
                        'invert': bool(step.invert_transform)}
    return drawn


def _bias_coefficients(order: int) -> int:
    """How many polynomial coefficients ``RandomBiasField.get_params`` draws for ``order``."""
    return sum(1 for x in range(order + 1) for y in range(order + 1 - x) for _ in range(order + 1 - x - y))
