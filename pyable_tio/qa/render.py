"""PNG thumbnails of the QA sheet (Pillow): per channel, the three views side by side, each
label map and ROI drawn as a coloured contour, edges lettered with patient directions.

Pillow is optional (``pip install "pyable-tio[qa]"``) and imported only here, when a
thumbnail is drawn.

Example:
    >>> png = channel_png(volume, [('labelmap_0', labels)], views_of(affine, centre))  # doctest: +SKIP
    >>> png[:4]  # doctest: +SKIP
    b'\\x89PNG'
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ..constants import QA_PANEL_PIXELS, QA_PNG_COLOURS, QA_WINDOW_PERCENTILES
from ..errors import MissingDependencyError
from .views import View

QA_EXTRA = 'pip install "pyable-tio[qa]"'
#: Contour colours of the label maps and ROIs, in subject key order (RGB).
COLOURS = ((255, 60, 60), (60, 220, 60), (70, 140, 255), (255, 200, 0), (230, 80, 230), (0, 220, 220))
#: Colour of the patient-direction letters; pixels between panels.
LETTER_COLOUR, GAP = (255, 255, 120), 2


def pillow() -> Any:
    """The ``PIL`` package, or a one-line :class:`~pyable_tio.errors.MissingDependencyError`.

    Example:
        >>> pillow().__name__
        'PIL'
    """
    try:
        import PIL
        from PIL import Image, ImageDraw, ImageFont  # noqa: F401
    except ImportError:
        raise MissingDependencyError(f'the QA sheet draws its thumbnails with Pillow: {QA_EXTRA}') from None
    return PIL


@lru_cache(maxsize=1)
def _font() -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def colour(index: int) -> tuple[int, int, int]:
    """The contour colour of the ``index``-th label map/ROI of a subject.

    Example:
        >>> colour(0)
        (255, 60, 60)
    """
    return COLOURS[index % len(COLOURS)]


def window(volume: np.ndarray) -> tuple[float, float]:
    """The intensities shown black and white (:data:`~pyable_tio.constants.QA_WINDOW_PERCENTILES`).

    Example:
        >>> window(np.arange(1001.0))
        (10.0, 995.0)
    """
    flat = volume.ravel()
    low, high = np.percentile(flat[:: flat.size // 500_000 + 1], QA_WINDOW_PERCENTILES)
    return float(low), float(high if high > low else low + 1)


def _panel_size(view: View, shape: tuple[int, int], pixels: int) -> tuple[int, int]:
    """Height and width in pixels of a panel, physical proportions kept, fitting ``pixels``."""
    height_mm, width_mm = shape[0] * view.spacing[0], shape[1] * view.spacing[1]
    scale = pixels / max(height_mm, width_mm)
    return max(1, round(height_mm * scale)), max(1, round(width_mm * scale))


def _nearest(panel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = np.minimum(((np.arange(size[0]) + 0.5) * panel.shape[0] / size[0]).astype(int), panel.shape[0] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * panel.shape[1] / size[1]).astype(int), panel.shape[1] - 1)
    return panel[rows][:, cols]


def _contour(labels: np.ndarray) -> np.ndarray:
    """Pixels of a non-zero region that touch another value (4-neighbourhood)."""
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels != 0)


def panel_rgb(
    volume: np.ndarray, overlays: Sequence[tuple[str, np.ndarray]], view: View, limits: tuple[float, float],
    pixels: int = QA_PANEL_PIXELS,
) -> np.ndarray:
    """One view as a ``pixels`` x ``pixels`` x 3 uint8 array: the slice, contours, letters.

    Example:
        >>> panel_rgb(volume, [], views_of(affine, centre)[0], (0.0, 1.0)).shape  # doctest: +SKIP
        (144, 144, 3)
    """
    pillow()
    from PIL import Image, ImageDraw

    plane = view.take(volume).astype(np.float32)
    size = _panel_size(view, plane.shape, pixels)
    low, high = limits
    grey = np.clip((plane - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)
    scaled = np.asarray(Image.fromarray(grey).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    rgb = np.repeat(scaled[..., None], 3, axis=2)
    for index, (_, labels) in enumerate(overlays):
        edge = _contour(_nearest(view.take(labels), size))
        rgb[edge] = colour(index)
    canvas = np.zeros((pixels, pixels, 3), np.uint8)
    top, left = (pixels - size[0]) // 2, (pixels - size[1]) // 2
    canvas[top:top + size[0], left:left + size[1]] = rgb
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = _font()
    middle = pixels // 2
    places = {'top': (middle, 2, 'mt'), 'bottom': (middle, pixels - 2, 'mb'),
              'left': (2, middle, 'lm'), 'right': (pixels - 2, middle, 'rm')}
    for edge_name, (x, y, anchor) in places.items():
        draw.text((x, y), view.letters[edge_name], fill=LETTER_COLOUR, font=font, anchor=anchor)
    return np.asarray(image)


def channel_png(
    volume: np.ndarray, overlays: Sequence[tuple[str, np.ndarray]], views: Sequence[View],
    pixels: int = QA_PANEL_PIXELS,
) -> bytes:
    """The PNG of one channel: its views side by side with every overlay's contour.

    Args:
        volume: The channel, D x H x W.
        overlays: ``(name, D x H x W labels)`` of each label map/ROI, coloured by position.
        views: From :func:`pyable_tio.qa.views.views_of`.
        pixels: Side of each panel.

    Example:
        >>> channel_png(volume, [('roi_0', roi)], views)[:4]  # doctest: +SKIP
        b'\\x89PNG'
    """
    Image = pillow().Image
    limits = window(volume)
    panels = [panel_rgb(volume, overlays, view, limits, pixels) for view in views]
    strip = np.full((pixels, len(panels) * (pixels + GAP) - GAP, 3), 40, np.uint8)
    for i, panel in enumerate(panels):
        strip[:, i * (pixels + GAP): i * (pixels + GAP) + pixels] = panel
    image = Image.fromarray(strip).quantize(colors=QA_PNG_COLOURS, method=Image.Quantize.MEDIANCUT)
    buffer = io.BytesIO()
    image.save(buffer, format='PNG', optimize=True)
    return buffer.getvalue()
