"""How far a channel or a label map is from the reference channel: the shift at which their
normalised mutual information (NMI, Studholme: (H(a) + H(b)) / H(a, b)) peaks.

A hill climb over whole-voxel shifts of block-averaged copies (at most
:data:`~pyable_tio.constants.QA_ALIGN_MAX_SIZE` voxels per axis), up to
:data:`~pyable_tio.constants.QA_SHIFT_SEARCH_MM`, refined by a parabola through the peak.

Example:
    >>> import numpy as np
    >>> z, y, x = np.mgrid[:24, :24, :24]
    >>> volume = np.exp(-((z - 12) ** 2 + (y - 12) ** 2 + (x - 10) ** 2) / 40.0) + 0.01
    >>> shift, nmi = channel_shift(volume, np.roll(volume, 4, axis=2), (1.0, 1.0, 1.0))
    >>> np.round(shift, 1).tolist()
    [0.0, 0.0, 4.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..constants import QA_ALIGN_MAX_SIZE, QA_NMI_BINS, QA_SHIFT_SEARCH_MM


def _coarse(volume: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Block means of up to ``factor`` voxels per axis (cropped to whole blocks), and the block sizes."""
    blocks = np.array([min(factor, n) for n in volume.shape])
    shape = [n // b for n, b in zip(volume.shape, blocks)]
    cropped = volume[tuple(slice(0, s * b) for s, b in zip(shape, blocks))]
    split = [x for pair in zip(shape, blocks) for x in pair]
    return cropped.reshape(split).mean(axis=(1, 3, 5), dtype=np.float32), blocks


def _bins(volume: np.ndarray, bins: int) -> np.ndarray:
    low, high = np.percentile(volume, (1, 99))
    scale = bins / (high - low) if high > low else 0.0
    return np.clip(((volume - low) * scale).astype(np.int32), 0, bins - 1)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _crop(shift: Sequence[int], shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices pairing voxel x of the reference with voxel x + shift of the moving volume."""
    fixed = tuple(slice(max(-s, 0), n - max(s, 0)) for s, n in zip(shift, shape))
    moving = tuple(slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, shape))
    return fixed, moving


def channel_shift(
    reference: np.ndarray, moving: np.ndarray, spacing: Sequence[float], search_mm: float = QA_SHIFT_SEARCH_MM,
    outside_zero: bool = True,
) -> tuple[np.ndarray, float]:
    """The shift (mm per D, H, W axis) of ``moving`` against ``reference``, and their NMI as given.

    ``moving`` voxel x + shift matches ``reference`` voxel x best. With ``outside_zero``, voxels
    where ``moving`` is 0 (outside its file) are left out; a label map's zeros are background
    and count (``outside_zero=False``). A shift of zero means aligned as far as this can tell.

    Example:
        >>> volume = np.zeros((20, 20, 20)); volume[5:15, 5:15, 5:15] = 1
        >>> channel_shift(volume, volume, (1.0, 1.0, 1.0))[0].tolist()
        [0.0, 0.0, 0.0]
    """
    factor = max(1, int(np.ceil(max(reference.shape) / QA_ALIGN_MAX_SIZE)))
    (fixed, blocks), (other, _) = _coarse(reference, factor), _coarse(moving, factor)
    step = np.asarray(spacing, dtype=float) * blocks
    bins = QA_NMI_BINS
    a, b = _bins(fixed, bins), _bins(other, bins)
    inside = other != 0 if outside_zero else np.ones(other.shape, bool)
    limit = np.maximum(0, np.floor(search_mm / step)).astype(int)
    memo: dict[tuple[int, ...], float] = {}

    def nmi(shift: tuple[int, ...]) -> float:
        if shift not in memo:
            if any(abs(s) > m for s, m in zip(shift, limit)):
                memo[shift] = -np.inf
            else:
                f, m = _crop(shift, a.shape)
                keep = inside[m]
                if keep.sum() < 0.2 * inside.sum():
                    memo[shift] = -np.inf  # too little overlap to judge
                else:
                    joint = np.bincount((a[f][keep] * bins + b[m][keep]).ravel(), minlength=bins * bins)
                    joint = joint.reshape(bins, bins)
                    h = _entropy(joint)
                    memo[shift] = (_entropy(joint.sum(1)) + _entropy(joint.sum(0))) / h if h > 0 else 2.0
        return memo[shift]

    best = (0, 0, 0)
    given = nmi(best)
    if not np.isfinite(given):
        return np.full(3, np.nan), float('nan')
    while True:  # hill climb over whole coarse voxels
        candidates = [tuple(c + (d if i == axis else 0) for i, c in enumerate(best)) for axis in range(3) for d in (-1, 1)]
        top = max(candidates, key=nmi)
        if nmi(top) <= nmi(best):
            break
        best = top
    refined = np.asarray(best, dtype=float)
    for axis in range(3):  # parabola through the peak and its two neighbours
        low, high = (tuple(c + (d if i == axis else 0) for i, c in enumerate(best)) for d in (-1, 1))
        f_low, f_mid, f_high = nmi(low), nmi(best), nmi(high)
        curvature = f_low - 2 * f_mid + f_high
        if np.isfinite(f_low) and np.isfinite(f_high) and curvature < 0:
            refined[axis] += float(np.clip(0.5 * (f_low - f_high) / curvature, -0.5, 0.5))
    return refined * step, float(given)
