"""The QA sheet's files: one self-contained HTML page (PNG thumbnails embedded as base64), and
the same scores in the same order as CSV and JSON beside it, for scripts that filter subjects.

Every file is written atomically (:func:`pyable_tio.io.atomic.atomic_write`).

Example:
    >>> html, csv_path, json_path = write_sheet(rows, [], Path('qa.html'), source='manifest.json')  # doctest: +SKIP
    >>> csv_path.name, json_path.name  # doctest: +SKIP
    ('qa.csv', 'qa.json')
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
import numpy as np

from ..io.atomic import atomic_write
from ..constants import (
    QA_CROSSED,
    QA_MAX_CHANNEL_SHIFT_MM,
    LABEL_MAX_DISTINCT_VALUES,
    QA_MAX_ROBUST_Z,
    QA_MAX_SPACING_RATIO,
    QA_MIN_IN_FOREGROUND,
    QA_MIN_IN_GRID,
    QA_NOTICE,
)
from .render import colour
from .row import SubjectQA

#: The documented thresholds, as the sheet and the JSON state them.
THRESHOLDS = {
    'channel_shift_mm': QA_MAX_CHANNEL_SHIFT_MM,
    'in_foreground_min': QA_MIN_IN_FOREGROUND,
    'in_grid_min': QA_MIN_IN_GRID,
    'spacing_ratio_max': QA_MAX_SPACING_RATIO,
    'robust_z_max': QA_MAX_ROBUST_Z,
    'label_values_max': LABEL_MAX_DISTINCT_VALUES,
}

_STYLE = """
body{font:13px/1.35 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
tr.crossed td{background:#fde8e8}tr.notice td{background:#fff6dd}
section{margin:18px 0;padding:8px;border-top:2px solid #bbb}h2{font-size:15px;margin:4px 0}
.crossed{color:#b00000;font-weight:600}.notice{color:#8a6d00}.grid{color:#666}
figure{display:inline-block;margin:4px 8px 4px 0}figcaption{font-size:12px;color:#444}
img{image-rendering:pixelated;background:#000}.legend span{margin-right:12px;font-weight:600}
"""


def _badness(value: float) -> str:
    return 'failed' if not np.isfinite(value) else f'{value:.2f}'


def _level(value: float) -> str:
    return 'crossed' if value >= QA_CROSSED else ('notice' if value >= QA_NOTICE else '')


def anchor(rank: int) -> str:
    """The HTML id of the ``rank``-th subject's row (1-based).

    Example:
        >>> anchor(3)
        'subject-3'
    """
    return f'subject-{rank}'


def render_html(rows: Sequence[SubjectQA], problems: Sequence[str], source: str) -> str:
    """The whole page: summary table (worst first, linked), then one section per subject.

    Example:
        >>> '<table' in render_html([], [], 'manifest.json')
        True
    """
    e = html.escape
    crossed = sum(row.worst >= QA_CROSSED for row in rows)
    thresholds = ', '.join(f'{name} {value:g}' for name, value in THRESHOLDS.items())
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f'<title>pyable-tio QA: {e(source)}</title><style>{_STYLE}</style></head><body>',
        f'<h1>QA sheet of {e(source)}</h1>',
        f'<p>{len(rows)} subject(s), worst first; {crossed} cross a threshold. Badness is each measure'
        f' against its threshold (1 = at the threshold). Thresholds: {e(thresholds)}.</p>',
    ]
    if problems:
        parts.append('<h2>Problems (subjects left out)</h2><ul>')
        parts += [f'<li class="crossed">{e(p)}</li>' for p in problems]
        parts.append('</ul>')
    parts.append('<table><tr><th>#</th><th>subject</th><th>worst</th><th>crossed</th><th>worst finding</th></tr>')
    for rank, row in enumerate(rows, 1):
        worst = row.worst_finding
        text = row.problem if row.problem is not None else (worst.text if worst else '')
        count = sum(f.crossed for f in row.findings)
        parts.append(
            f'<tr class="{_level(row.worst)}"><td>{rank}</td><td><a href="#{anchor(rank)}">{e(row.id)}</a></td>'
            f'<td>{_badness(row.worst)}</td><td>{count}</td><td>{e(text or "")}</td></tr>'
        )
    parts.append('</table>')
    for rank, row in enumerate(rows, 1):
        parts.append(f'<section id="{anchor(rank)}"><h2>{rank}. {e(row.id)}'
                     f' <small>worst {_badness(row.worst)}</small></h2><p class="grid">{e(row.grid)}</p>')
        if row.problem is not None:
            parts.append(f'<p class="crossed">could not load: {e(row.problem)}</p></section>')
            continue
        notable = sorted((f for f in row.findings if f.badness >= QA_NOTICE), key=lambda f: -f.badness)
        if notable:
            parts.append('<ul>' + ''.join(f'<li class="{_level(f.badness)}">{e(f.text)}'
                                          f' (badness {f.badness:.2f})</li>' for f in notable) + '</ul>')
        if row.overlays:
            legend = ''.join(f'<span style="color:rgb{colour(i)}">&#9632; {e(name)}</span>'
                             for i, name in enumerate(row.overlays))
            parts.append(f'<p class="legend">contours: {legend}</p>')
        for caption, png in row.thumbnails:
            width, height = _png_size(png)
            data = base64.b64encode(png).decode('ascii')
            parts.append(f'<figure><img src="data:image/png;base64,{data}" width="{width}" height="{height}"'
                         f' alt="{e(row.id)}: {e(caption)}"><figcaption>{e(caption)}</figcaption></figure>')
        parts.append('</section>')
    parts.append('</body></html>\n')
    return '\n'.join(parts)


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return int.from_bytes(png[16:20], 'big'), int.from_bytes(png[20:24], 'big')


def table(rows: Sequence[SubjectQA]) -> tuple[list[str], list[dict]]:
    """The CSV's columns and rows: rank, id, worst, the worst finding, then every measure.

    Example:
        >>> table([])[0][:4]
        ['rank', 'id', 'worst', 'worst_finding']
    """
    measures = sorted({f.column for row in rows for f in row.findings})
    columns = ['rank', 'id', 'worst', 'worst_finding', 'crossed', 'problem'] + measures
    records = []
    for rank, row in enumerate(rows, 1):
        worst = row.worst_finding
        record = {'rank': rank, 'id': row.id, 'worst': _badness(row.worst),
                  'worst_finding': worst.column if worst and row.problem is None else '',
                  'crossed': sum(f.crossed for f in row.findings), 'problem': row.problem or ''}
        record.update({f.column: '' if not np.isfinite(f.value) else f'{f.value:.4g}' for f in row.findings})
        records.append(record)
    return columns, records


def as_json(rows: Sequence[SubjectQA], problems: Sequence[str], source: str) -> dict:
    """The JSON document: source, thresholds, problems and the subjects worst first.

    Example:
        >>> as_json([], [], 'manifest.json')['thresholds']['in_grid_min']
        0.95
    """
    return {
        'source': source,
        'thresholds': THRESHOLDS,
        'problems': list(problems),
        'subjects': [
            {'rank': rank, 'id': row.id, 'worst': row.worst if np.isfinite(row.worst) else None,
             'problem': row.problem, 'grid': row.grid, 'seconds': round(row.seconds, 3),
             'findings': [f.as_dict() for f in row.findings]}
            for rank, row in enumerate(rows, 1)
        ],
    }


def write_sheet(rows: Sequence[SubjectQA], problems: Sequence[str], out: Path, source: str) -> tuple[Path, Path, Path]:
    """Write ``out`` (HTML) and the CSV and JSON beside it; returns the three paths.

    Example:
        >>> write_sheet(rows, [], Path('qa.html'), 'manifest.json')  # doctest: +SKIP
        (PosixPath('qa.html'), PosixPath('qa.csv'), PosixPath('qa.json'))
    """
    out = Path(out)
    csv_path, json_path = out.with_suffix('.csv'), out.with_suffix('.json')
    columns, records = table(rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator='\n')
    writer.writeheader()
    writer.writerows(records)
    document = json.dumps(as_json(rows, problems, source), indent=1)
    page = render_html(rows, problems, source)
    atomic_write(csv_path, lambda stream: stream.write(text.getvalue().encode()))
    atomic_write(json_path, lambda stream: stream.write(document.encode()))
    atomic_write(out, lambda stream: stream.write(page.encode()))
    return out, csv_path, json_path
