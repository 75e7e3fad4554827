"""Whether subjects can share a batch: what TorchIO's collate compares, checked before training.

``tio.SubjectsLoader`` collates a batch from the keys of its *first* subject: at every level
of nested dicts (``meta``, ``meta["names"]``...) it looks up the first subject's keys in every
other subject (a missing one is a bare ``KeyError``; an extra one is silently dropped), stacks
tensors and arrays, and turns numbers into a tensor (a text or None among numbers fails).
Lists and text are kept as lists, so their lengths need not agree. :func:`collate_problems`
compares exactly that, per subject, from the plans (no voxel read).

Example:
    >>> collate_problems(plans)  # doctest: +SKIP
    ['subjects differ in what a batch collates: "sub-02" lacks field "age" ("sub-01" has it); ...']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Number
from typing import Any

from ..constants import ID, META

#: Kinds of leaf values, as TorchIO's collate treats them.
_NUMBER, _ARRAY, _KEPT = 'a number', 'an array', 'text or a list'


def structure(value: Any) -> Any:
    """What collate sees of ``value``: nested dicts of leaf kinds (number, array, kept as is).

    Example:
        >>> structure({'age': 41, 'meta': {'names': {'images': ['T1']}}})
        {'age': 'a number', 'meta': {'names': {'images': 'text or a list'}}}
    """
    if isinstance(value, Mapping):
        return {str(key): structure(item) for key, item in value.items()}
    if isinstance(value, Number) and not isinstance(value, complex):
        return _NUMBER
    if hasattr(value, 'shape') and hasattr(value, 'dtype'):
        return _ARRAY
    return _KEPT


def subject_structure(plan: Any) -> dict[str, Any]:
    """The structure of the subject a :class:`pyable_tio.plan.SubjectPlan` builds, images left out.

    Image keys (``images``, ``roi_0``...) are compared by
    :func:`pyable_tio.checking.headers.batch_problems`, with the fix for each.

    Example:
        >>> sorted(subject_structure(plan))  # doctest: +SKIP
        ['age', 'id', 'label', 'meta']
    """
    return {ID: _KEPT, META: structure(plan.meta()), **structure(plan.extra)}


def _differences(first: Mapping, other: Mapping, path: str = '') -> list[str]:
    """How ``other`` differs from ``first`` where collate compares them (keys, leaf kinds)."""
    found = []
    for key, kind in first.items():
        where = _where(path, key)
        if key not in other:
            found.append(f'lacks {where}')
            continue
        theirs = other[key]
        if isinstance(kind, Mapping) and isinstance(theirs, Mapping):
            found += _differences(kind, theirs, where)
        elif isinstance(kind, Mapping) or isinstance(theirs, Mapping) or (kind != theirs and kind != _KEPT):
            # A text or list first keeps every value as a list; a number, array or dict first does not.
            found.append(f'has {_kind(theirs)} as {where}, not {_kind(kind)}')
    found += [f'has {_where(path, key)}, an extra key' for key in other if key not in first]
    return found


def _kind(kind: Any) -> str:
    return 'a dict' if isinstance(kind, Mapping) else kind


def _where(path: str, key: str) -> str:
    """``meta["names"]["images"]`` below the top; ``field "age"`` (or ``"meta"``) at it."""
    if path:
        return f'{path}["{key}"]'
    return key if key in (ID, META) else f'field "{key}"'


def collate_problems(plans: Sequence[Any], limit: int = 4) -> list[str]:
    """One line naming each subject whose batch structure differs from the first's, and how.

    Args:
        plans: The subjects' :class:`pyable_tio.plan.SubjectPlan` objects.
        limit: Subjects named in full; the others are counted.

    Returns:
        ``[]`` when every subject collates with the first, else one problem line.

    Example:
        >>> collate_problems([])
        []
    """
    if len(plans) < 2:
        return []
    first = plans[0]
    reference = subject_structure(first)
    lines = []
    for plan in plans[1:]:
        found = _differences(reference, subject_structure(plan))
        if found:
            lines.append(f'"{plan.id}" {", ".join(found)}')
    if not lines:
        return []
    shown = '; '.join(lines[:limit]) + (f'; and {len(lines) - limit} more subject(s)' if len(lines) > limit else '')
    return [
        f'subjects differ in what a batch collates, compared with "{first.id}": {shown}. TorchIO\'s'
        ' collate looks up the first subject\'s keys in every subject of a batch (a missing one is'
        ' a KeyError, an extra one is dropped) and stacks numbers: give every subject the same'
        ' extra fields with the same kinds of values (or list them in none) and the same'
        ' preprocessing steps'
    ]
