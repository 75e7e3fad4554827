"""The measures of the QA sheet, each a :class:`Finding` with its value, threshold and badness.

Badness is a finding's value measured against its documented threshold
(``pyable_tio.constants.QA_*``): 0 is clean, :data:`~pyable_tio.constants.QA_CROSSED` (1) is
at the threshold, notices are :data:`~pyable_tio.constants.QA_NOTICE`. A subject's worst
badness sorts the sheet.

- Channel alignment: the shift (mm) of a channel against the reference channel at which their
  normalised mutual information peaks (:func:`pyable_tio.qa.shift.channel_shift`).
- Label placement: the shift at which a label map/ROI matches the reference channel best (the
  same NMI search; its zeros count as background), the share of a label map's/ROI's foreground inside the reference channel's
  foreground (Otsu, dilated), on the grid; and inside the reference grid, measured from the
  file itself, in physical coordinates (a label map outside the grid loads as zeros).
- Flags from headers (oblique file, anisotropic spacing), label maps with implausibly many
  values, and intensity outliers against the other subjects (robust z-scores).

Example:
    >>> import numpy as np
    >>> shift_finding('T2', np.array([0.0, 4.0, 3.0]), 1.2).badness  # 5 mm against 3 mm
    1.6666666666666667
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..constants import (
    QA_CROSSED,
    QA_FOREGROUND_MARGIN_MM,
    QA_MAX_CHANNEL_SHIFT_MM,
    LABEL_MAX_DISTINCT_VALUES,
    LAYOUT_AXIS_TOLERANCE,
    QA_MAX_ROBUST_Z,
    QA_MAX_SPACING_RATIO,
    QA_MIN_IN_FOREGROUND,
    QA_MIN_IN_GRID,
    QA_MIN_SUBJECTS_Z,
    QA_NOTICE,
)
from ..checking import labels as label_checks
from ..geometry import registration
from ..geometry.grid import Grid, read_header
from ..io import backend
from ..plan import PlanEntry

#: Voxels sampled for a channel's intensity statistics.
_MAX_STAT_VOXELS = 200_000


@dataclass(frozen=True)
class Finding:
    """One measure of one subject.

    Args:
        check: What was measured: ``channel_shift``, ``in_foreground``, ``in_grid``,
            ``oblique``, ``spacing_ratio``, ``label_values``, ``intensity_z``, ``load``.
        item: The channel or label map/ROI it is about (``T2``, ``labelmap_0``...).
        value: The measure (NaN when it could not be measured).
        threshold: The value at which it crosses (``pyable_tio.constants.QA_*``).
        badness: ``value`` against ``threshold``: 1 at the threshold, more is worse.
        text: One line for people.

    Example:
        >>> Finding('in_grid', 'labelmap_0', 0.6, 0.95, 8.0, 'inside the grid: 60%').crossed
        True
    """

    check: str
    item: str
    value: float
    threshold: float
    badness: float
    text: str

    @property
    def crossed(self) -> bool:
        """The finding reaches its threshold."""
        return self.badness >= QA_CROSSED

    @property
    def column(self) -> str:
        """Its column in the CSV, e.g. ``in_grid[labelmap_0]``."""
        return f'{self.check}[{self.item}]'

    def as_dict(self) -> dict:
        """JSON-ready fields (NaN as None)."""
        data = asdict(self)
        for key in ('value', 'badness'):
            data[key] = None if not np.isfinite(data[key]) else round(float(data[key]), 4)
        return data


def _share_badness(share: float, minimum: float) -> float:
    """0 for a share of 1, 1 at ``minimum``, growing linearly below."""
    return float((1.0 - share) / (1.0 - minimum)) if np.isfinite(share) else 0.0


# ---------------------------------------------------------------- foreground


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of ``values`` (maximises the between-class variance of a histogram).

    Example:
        >>> otsu_threshold(np.r_[np.zeros(50), np.full(50, 10.0)]) < 10
        True
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        return float(values.min()) if values.size else 0.0
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * centres)
    total, grand = weight[-1], mean[-1]
    with np.errstate(divide='ignore', invalid='ignore'):
        between = (grand * weight - total * mean) ** 2 / (weight * (total - weight))
    return float(edges[int(np.nanargmax(between[:-1])) + 1])


def foreground(volume: np.ndarray, spacing: Sequence[float], margin_mm: float = QA_FOREGROUND_MARGIN_MM) -> np.ndarray:
    """Voxels above the Otsu threshold, dilated by about ``margin_mm`` (D x H x W bool).

    Example:
        >>> volume = np.zeros((9, 9, 9)); volume[4, 4, 4] = 1
        >>> int(foreground(volume, (1.0, 1.0, 1.0), margin_mm=1.0).sum())
        7
    """
    mask = volume > otsu_threshold(volume[::2, ::2, ::2] if volume.size > 1_000_000 else volume)
    steps = int(round(margin_mm / max(min(spacing), 1e-6)))
    if steps > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, iterations=steps)
    return mask


# ---------------------------------------------------------------- alignment (shift.py searches)


def shift_finding(item: str, shift_mm: np.ndarray, nmi: float, check: str = 'channel_shift') -> Finding:
    """The :class:`Finding` of :func:`channel_shift`'s result for channel or label map ``item``.

    ``check`` is ``channel_shift`` (a channel against the reference channel) or
    ``label_shift`` (a label map/ROI against the reference channel).
    """
    size = float(np.linalg.norm(shift_mm)) if np.all(np.isfinite(shift_mm)) else float('nan')
    badness = size / QA_MAX_CHANNEL_SHIFT_MM if np.isfinite(size) else QA_NOTICE
    text = (f'{item}: best match {size:.1f} mm off the reference channel (NMI {nmi:.3f})' if np.isfinite(size)
            else f'{item}: too little overlap with the reference channel to compare')
    return Finding(check, item, size, QA_MAX_CHANNEL_SHIFT_MM, badness, text)


# ---------------------------------------------------------------- labels


def in_foreground(label: np.ndarray, image_foreground: np.ndarray, item: str) -> Finding | None:
    """Share of ``label``'s non-zero voxels inside ``image_foreground``; None for an empty label.

    Example:
        >>> inside = np.zeros((4, 4, 4), bool); inside[:2] = True
        >>> in_foreground(np.ones((4, 4, 4)), inside, 'roi_0').value
        0.5
    """
    mask = label != 0
    count = int(mask.sum())
    if count == 0:
        return None
    share = float(np.logical_and(mask, image_foreground).sum() / count)
    return Finding('in_foreground', item, share, QA_MIN_IN_FOREGROUND, _share_badness(share, QA_MIN_IN_FOREGROUND),
                   f'{item}: {share:.0%} of its voxels on the image foreground')


def share_in_grid(entry: PlanEntry, grid: Grid) -> float:
    """Share of a label file's non-zero voxels whose centres fall inside ``grid``, in physical space.

    The complement of :func:`pyable_tio.checking.labels.foreground_lost` (``validate``'s and
    the reader's measure), with the file's transforms: a label map shifted out of the grid,
    which loads as zeros there, is measured where it is. NaN for an empty file, a dimension
    other than the grid's or a transform without an inverse.

    Example:
        >>> share_in_grid(subject.plan.entry_of_key('labelmap_0'), subject.plan.grid)  # doctest: +SKIP
        1.0
    """
    image = backend.load(entry.source, entry.role)
    if image.GetDimension() != grid.dimension:
        return float('nan')
    lost, count = label_checks.foreground_lost(image, grid, registration.compose(entry.transforms))
    return 1.0 - lost if count else float('nan')


def in_grid_finding(item: str, share: float) -> Finding:
    """The :class:`Finding` of :func:`share_in_grid` for label map/ROI ``item``."""
    text = (f'{item}: {share:.0%} of its file\'s voxels inside the reference grid' if np.isfinite(share)
            else f'{item}: share inside the grid not measured (empty file or transform without inverse)')
    return Finding('in_grid', item, share, QA_MIN_IN_GRID, _share_badness(share, QA_MIN_IN_GRID), text)


def label_values(label: np.ndarray, item: str) -> Finding:
    """The number of distinct values of a label map/ROI (on the grid) against the plausible maximum.

    Counted as ``validate`` counts them in the file
    (:func:`pyable_tio.checking.labels.distinct_values`).

    Example:
        >>> label_values(np.arange(10) % 3, 'labelmap_0').value
        3.0
    """
    count = label_checks.distinct_values(label)  # as validate counts them
    badness = count / LABEL_MAX_DISTINCT_VALUES if count > LABEL_MAX_DISTINCT_VALUES else 0.0
    return Finding('label_values', item, float(count), LABEL_MAX_DISTINCT_VALUES, badness,
                   f'{item}: {count} distinct values')


# ---------------------------------------------------------------- headers


def header_findings(entry: PlanEntry, item: str) -> list[Finding]:
    """Notices from a file's header: an oblique grid, a spacing ratio over the maximum.

    Example:
        >>> header_findings(entry, 'T2')  # doctest: +SKIP
        [Finding(check='oblique', item='T2', ...)]
    """
    grid = Grid.from_image(read_header(entry.source))
    findings = []
    # validate's tolerance (orientation_label): direction noise from a converter is not oblique.
    if not grid.is_axis_aligned(LAYOUT_AXIS_TOLERANCE):
        cosines = np.abs(grid.direction_matrix).max(axis=0).clip(-1, 1)
        degrees = float(np.degrees(np.arccos(cosines.min())))
        findings.append(Finding('oblique', item, degrees, 0.0, QA_NOTICE,
                                f'{item}: oblique file ({degrees:.0f} degrees off its closest axes)'))
    spacing = [s for s, n in zip(grid.spacing, grid.size) if n > 1]
    ratio = max(spacing) / min(spacing) if spacing else 1.0
    if ratio > QA_MAX_SPACING_RATIO:
        findings.append(Finding('spacing_ratio', item, ratio, QA_MAX_SPACING_RATIO, QA_NOTICE,
                                f'{item}: anisotropic spacing {" x ".join(f"{s:g}" for s in grid.spacing)} mm'))
    return findings


# ---------------------------------------------------------------- intensities


def intensity_statistics(volume: np.ndarray) -> tuple[float, float]:
    """Median and inter-quartile range of a channel over its own foreground (Otsu).

    Example:
        >>> intensity_statistics(np.r_[np.zeros(100), np.full(50, 10.0), np.full(50, 12.0)])
        (11.0, 2.0)
    """
    flat = volume.ravel()
    flat = flat[:: flat.size // _MAX_STAT_VOXELS + 1]
    values = flat[flat > otsu_threshold(flat)]
    if values.size == 0:
        values = flat
    q1, median, q3 = np.percentile(values, (25, 50, 75))
    return float(median), float(q3 - q1)


def robust_z(values: Sequence[float]) -> np.ndarray:
    """Robust z-scores 0.6745 (x - median) / MAD (zeros when the MAD is 0 or there are too few).

    Example:
        >>> np.round(robust_z([10, 11, 9, 10, 30]), 1).tolist()
        [0.0, 0.7, -0.7, 0.0, 13.5]
    """
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size < QA_MIN_SUBJECTS_Z:
        return np.zeros(values.shape)
    median = np.median(finite)
    mad = np.median(np.abs(finite - median))
    if mad == 0:
        return np.zeros(values.shape)
    return np.nan_to_num(0.6745 * (values - median) / mad)


def intensity_finding(item: str, measure: str, z: float) -> Finding:
    """An intensity outlier finding (``measure``: ``median`` or ``spread``)."""
    badness = abs(z) / QA_MAX_ROBUST_Z
    return Finding('intensity_z', f'{item} {measure}', float(z), QA_MAX_ROBUST_Z, badness,
                   f'{item}: {measure} intensity {z:+.1f} robust SDs from the other subjects')
