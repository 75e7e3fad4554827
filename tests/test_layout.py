"""The package's layout: no import cycle between its modules, and a small public namespace.

Every import counts: at module level, inside functions and under ``TYPE_CHECKING``. Optional
third-party dependencies imported lazily (MONAI, numba, deepbet, ...) are outside the graph.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import pyable_tio as pt

PACKAGE = Path(pt.__file__).parent
ROOT = 'pyable_tio'


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob('*.py'):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        names['.'.join(parts)] = path
    return names


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports, with the packages above them (their ``__init__`` runs)."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[: len(package.split('.')) - node.level + 1]
                source = '.'.join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ''
            # ``from package import module`` imports the module; ``from module import name`` the module
            targets = [f'{source}.{alias.name}' if f'{source}.{alias.name}' in modules else source for alias in node.names]
        else:
            continue
        for target in targets:
            # importing a.b.c runs a/b/__init__.py first: the parent packages count too
            parts = target.split('.')
            found.update('.'.join(parts[:n]) for n in range(2, len(parts) + 1))
    return {t for t in found if t in modules and t != name and not name.startswith(t + '.')}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle():
    modules = _module_names()
    # the top-level namespace re-exports; modules never import it, so it is left out
    graph = {name: _imports(name, path, modules) - {ROOT} for name, path in modules.items() if name != ROOT}
    assert not _cycles(graph), f'import cycles between modules: {_cycles(graph)}'


def test_cycle_finder_sees_function_level_and_type_checking_imports(tmp_path):
    source = (
        'from typing import TYPE_CHECKING\n'
        'if TYPE_CHECKING:\n'
        '    from .b import B\n'
        'def f():\n'
        '    from . import c\n'
    )
    path = tmp_path / 'a.py'
    path.write_text(source)
    modules = {'p.a': path, 'p.b': path, 'p.c': path}
    assert _imports('p.a', path, modules) == {'p.b', 'p.c'}
    assert _cycles({'p.a': {'p.b'}, 'p.b': {'p.a'}, 'p.c': set()}) == [['p.a', 'p.b']]


def test_public_namespace_is_user_level():
    # about 15-20 user-level names; internals stay importable from their modules
    assert len(pt.__all__) <= 24, sorted(pt.__all__)
    for name in pt.__all__:
        assert getattr(pt, name) is not None


def test_stages_are_packages():
    stages = {'manifest', 'checking', 'io', 'geometry', 'cache', 'preprocess', 'transforms', 'datasets', 'inference', 'cli'}
    assert stages <= {p.name for p in PACKAGE.iterdir() if (p / '__init__.py').is_file()}
    top_level = sorted(p.stem for p in PACKAGE.glob('*.py') if p.stem not in ('__init__', '__main__'))
    assert len(top_level) <= 14, top_level


def test_names_exported_before_the_layout_still_resolve_with_a_deprecation_warning():
    from pyable_tio.geometry.grid import Grid
    from pyable_tio.reader import GridReader

    with pytest.warns(DeprecationWarning, match=r'from pyable_tio\.geometry\.grid import Grid'):
        assert pt.Grid is Grid
    with pytest.warns(DeprecationWarning, match=r'from pyable_tio\.reader import GridReader'):
        assert pt.GridReader is GridReader
    assert 'Grid' not in pt.__all__ and 'Grid' not in dir(pt)
    for name, module in pt._MOVED.items():
        with pytest.warns(DeprecationWarning):
            assert getattr(pt, name) is getattr(importlib.import_module(f'pyable_tio{module}'), name)


def test_old_module_names_that_became_packages_keep_their_names():
    from pyable_tio.geometry import Grid, read_header
    from pyable_tio.geometry.grid import Grid as grid_class
    from pyable_tio.inference import inference_loader
    from pyable_tio.inference.grid import inference_loader as loader_function

    assert Grid is grid_class and callable(read_header) and inference_loader is loader_function
