"""Telling a misspelt manifest field from an extra one.

Extra fields (a class label, an age...) are kept, but a field whose name is close to a known
one (``"labelmap"``, ``"refrence"``, a CSV column ``labelmap_path``, ``"imgs"``) is far more
likely a typo: kept as an extra field, the files it lists would silently be left out (and with
``missing="empty"`` a subject would train on an all-zero label map).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..constants import (
    CSV_LIST_COLUMNS,
    FIELD_IMAGES,
    FIELD_LABELMAPS,
    FIELD_PREPROCESS,
    FIELD_REFERENCE,
    FIELD_REFERENCE_SPACE,
    FIELD_ROIS,
    FIELD_TRANSFORMS,
    REFERENCE_FIRST,
    REFERENCE_LARGEST,
)

#: Fields a manifest row may hold (``id`` included).
KNOWN_FIELDS = (
    FIELD_IMAGES, FIELD_ROIS, FIELD_LABELMAPS, FIELD_REFERENCE, FIELD_REFERENCE_SPACE, FIELD_TRANSFORMS,
    FIELD_PREPROCESS,
)
#: Largest edit distance still taken for a typo (names of 5 letters or more; 4-letter names
#: allow 1, shorter ones are compared only by singular/plural: ``"age"`` is 2 edits from
#: ``"rois"``'s neighbours and ``"id"`` from most short extra fields).
MAX_DISTANCE = 2
_SUFFIXES = ('_paths', '_path', '_files', '_file')


def edit_distance(a: str, b: str) -> int:
    """Edit distance: insertions, deletions, substitutions and swaps of neighbours (``"rios"``).

    Example:
        >>> edit_distance('refrence', 'reference'), edit_distance('rios', 'rois')
        (1, 1)
    """
    rows = [list(range(len(b) + 1))] + [[i] + [0] * len(b) for i in range(1, len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            rows[i][j] = min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                rows[i][j] = min(rows[i][j], rows[i - 2][j - 2] + 1)
    return rows[-1][-1]


def _allowed_distance(a: str, b: str) -> int:
    shortest = min(len(a), len(b))
    return MAX_DISTANCE if shortest >= 5 else (1 if shortest == 4 else 0)


def closest(name: str, candidates: tuple[str, ...] | list[str]) -> str | None:
    """The candidate ``name`` is a likely misspelling of, or None.

    Close means: the same but for case, a plural ``s``, a ``_path``/``_paths`` or ``ing``
    suffix, or at most :data:`MAX_DISTANCE` edits (for names of five letters or more).

    Example:
        >>> closest('labelmap_path', KNOWN_FIELDS), closest('imgs', KNOWN_FIELDS), closest('label', KNOWN_FIELDS)
        ('labelmaps', 'images', None)
    """
    text = name.strip().lower().replace('-', '_').replace(' ', '_')
    stems = {text}
    for suffix in _SUFFIXES:
        if text.endswith(suffix) and len(text) > len(suffix):
            stems.add(text[: -len(suffix)])
    stems.add(text.replace('img', 'image'))  # the usual abbreviation: "imgs", "img_paths"
    if text.endswith('ing') and len(text) > 6:
        stems.add(text[:-3])  # the noun for the verb: "preprocessing" is "preprocess"
    plurals = stems | {s[:-1] for s in stems if s.endswith('s')} | {s + 's' for s in stems}
    for candidate in candidates:
        if candidate in plurals:
            return candidate
    best = None
    for candidate in candidates:
        for stem in stems:
            distance = edit_distance(stem, candidate)
            if distance <= _allowed_distance(stem, candidate) and (best is None or distance < best[0]):
                best = (distance, candidate)
    return best[1] if best else None


def unknown_field_problem(name: str, spelling: Mapping[str, str] | None = None) -> str | None:
    """The problem of an extra field ``name`` that looks like a known field, else None.

    Args:
        name: The field (or CSV column) name.
        spelling: Known field -> how this manifest format spells it (a single CSV writes
            ``labelmap_paths`` for ``labelmaps``).

    Example:
        >>> unknown_field_problem('refrence')
        'unknown field, did you mean "reference"? (to keep it as an extra field: extra_fields=["refrence"] or --extra-field refrence)'
    """
    spelling = spelling or {}
    match = closest(name, (*KNOWN_FIELDS, 'id'))
    if match is None:
        columns = [column for column in CSV_LIST_COLUMNS if column in spelling.values()]
        column = closest(name, columns) if columns else None
        match = CSV_LIST_COLUMNS[column] if column else None
    if match is None or match == name:
        return None
    suggestion = spelling.get(match, match)
    keep = f'extra_fields=["{name}"] or --extra-field {name}'
    return f'unknown field, did you mean "{suggestion}"? (to keep it as an extra field: {keep})'


def reference_problem(text: str) -> str:
    """The problem of a reference that is neither a keyword, an index nor an existing file.

    Example:
        >>> reference_problem('largset')
        '"largset" is neither "first" nor "largest" (did you mean "largest"?), an index nor an existing file'
    """
    keywords = (REFERENCE_FIRST, REFERENCE_LARGEST)
    hint = min(keywords, key=lambda k: edit_distance(text.lower(), k))
    did_you_mean = f' (did you mean "{hint}"?)' if edit_distance(text.lower(), hint) <= MAX_DISTANCE else ''
    return f'"{text}" is neither "{keywords[0]}" nor "{keywords[1]}"{did_you_mean}, an index nor an existing file'
