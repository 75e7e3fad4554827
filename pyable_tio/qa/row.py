"""One subject's row of the QA sheet: its findings, thumbnails and worst badness.

Example:
    >>> SubjectQA('sub-01', (), ()).worst
    0.0
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .scores import Finding


@dataclass(frozen=True)
class SubjectQA:
    """One subject's row of the sheet.

    Args:
        id: The subject id.
        findings: Its measures (:class:`~pyable_tio.qa.scores.Finding`).
        thumbnails: ``(channel name, PNG bytes)`` per image channel.
        overlays: Names of the label maps/ROIs drawn, in colour order.
        grid: The reference grid, in words.
        statistics: Per channel name, the median and IQR of its foreground intensities.
        problem: Why it could not be loaded, or None.
        seconds: Time taken to load, score and draw it.

    Example:
        >>> SubjectQA('sub-01', (), ()).worst
        0.0
    """

    id: str
    findings: tuple[Finding, ...]
    thumbnails: tuple[tuple[str, bytes], ...]
    overlays: tuple[str, ...] = ()
    grid: str = ''
    statistics: dict[str, tuple[float, float]] = field(default_factory=dict)
    problem: str | None = None
    seconds: float = 0.0

    @property
    def worst(self) -> float:
        """The largest badness of its findings (infinite when it failed to load)."""
        if self.problem is not None:
            return float('inf')
        return max((f.badness for f in self.findings), default=0.0)

    @property
    def worst_finding(self) -> Finding | None:
        """Its worst finding (None without findings)."""
        return max(self.findings, key=lambda f: f.badness, default=None)
