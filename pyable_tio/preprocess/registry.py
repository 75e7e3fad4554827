"""Steps by name (``"n4"``, ``"skullstrip"``) and the checks run before any slow work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import PreprocessStep, step_key
from .n4 import N4
from .skullstrip import SkullStrip

#: Manifest and CLI names of the built-in steps.
STEPS: dict[str, type[PreprocessStep]] = {N4.name: N4, SkullStrip.name: SkullStrip}


def resolve_steps(value: Any) -> tuple[Any, ...]:
    """Steps from names, ``{"name": ..., **parameters}`` dicts or step objects, in order.

    Args:
        value: None or ``[]`` (no preprocessing), a comma-separated string (``"n4,skullstrip"``)
            or a list of names, dicts and step objects (anything with ``__call__`` and ``key``).

    Returns:
        The steps, as objects.

    Raises:
        ValueError: naming the unknown step or parameter and listing the known ones.

    Example:
        >>> [step.name for step in resolve_steps(['n4', {'name': 'skullstrip', 'threshold': 0.4}])]
        ['n4', 'skullstrip']
    """
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part.strip() for part in value.split(',') if part.strip()]
    if not isinstance(value, Sequence):
        raise ValueError(f'preprocess must be a list of steps (e.g. ["n4", "skullstrip"]), got {value!r}')
    steps = tuple(_step(item) for item in value)
    check_order(steps)
    return steps


def check_order(steps: Sequence[Any]) -> None:
    """Every mask a step reads from an earlier step is made before it.

    Raises:
        ValueError: e.g. ``N4(mask="brain")`` without a ``SkullStrip`` before it.

    Example:
        >>> check_order([SkullStrip(), N4(mask='brain')])
    """
    made: set[str] = set()
    for step in steps:
        if isinstance(step, PreprocessStep):
            for name in step.masks_needed():
                if name in _MADE_BY and name not in made:
                    raise ValueError(
                        f'step {step!r} uses mask "{name}", which only a {_MADE_BY[name]} step before it makes'
                    )
            made.update(step.masks_made())


def missing_dependencies(steps: Sequence[Any]) -> list[str]:
    """One line per missing dependency of ``steps`` (empty when everything is installed).

    Example:
        >>> missing_dependencies([N4()])
        []
    """
    lines: list[str] = []
    for step in steps:
        if isinstance(step, PreprocessStep):
            lines += [line for line in step.missing_dependencies() if line not in lines]
    return lines


def _step(item: Any) -> Any:
    if isinstance(item, str):
        name = item.strip().lower()
        if name not in STEPS:
            raise ValueError(f'unknown preprocessing step {item!r}; known steps: {sorted(STEPS)}')
        return STEPS[name]()
    if isinstance(item, Mapping):
        parameters = dict(item)
        name = str(parameters.pop('name', '')).strip().lower()
        if name not in STEPS:
            raise ValueError(
                f'a preprocessing step written as a dict needs "name" (one of {sorted(STEPS)}), got {dict(item)!r}'
            )
        try:
            return STEPS[name](**parameters)
        except TypeError:
            known = sorted(STEPS[name].__dataclass_fields__)
            raise ValueError(f'step "{name}" takes parameters {known}, got {sorted(parameters)}') from None
    step_key(item)  # raises for objects without a key
    return item


_MADE_BY = {name: cls.__name__ for cls in STEPS.values() for name in cls().masks_made()}
