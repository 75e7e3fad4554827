"""The private TorchIO/torch members pyable-tio relies on are still there (pinned minor version)."""

from __future__ import annotations

import re
from pathlib import Path

import torchio as tio

from pyable_tio.torchio_private import missing_members

ROOT = Path(__file__).resolve().parents[1]


def test_every_private_member_is_still_there():
    missing = missing_members()
    assert not missing, (
        f'TorchIO {tio.__version__} lacks private members pyable-tio relies on: {missing}. '
        'Update the modules named (and pyable_tio/torchio_private.py) before raising the pin in pyproject.toml.'
    )


def test_torchio_minor_version_is_pinned_and_installed():
    pin = re.search(r'"torchio>=([\d.]+),<([\d.]+)"', (ROOT / 'pyproject.toml').read_text())
    assert pin, 'pyproject.toml must pin torchio as "torchio>=X.Y.Z,<X.(Y+1)"'
    low, high = pin.groups()
    major, minor = (int(n) for n in low.split('.')[:2])
    assert high == f'{major}.{minor + 1}', f'the pin must stop at the next minor version, got <{high}'
    installed = tuple(int(n) for n in tio.__version__.split('.')[:2])
    assert installed == (major, minor), f'tests run against torchio {tio.__version__}, pinned to {low}..<{high}'


def _private_uses() -> set[str]:
    """Every private TorchIO/torch member the package uses, as ``owner._name``: named on a
    ``tio``/``torch`` object, imported from a private torch module, or reached through ``self``
    in a subclass of a TorchIO/torch class (a method it calls or overrides, an attribute)."""
    import importlib
    import inspect
    import pkgutil

    import pyable_tio

    found = set()
    for path in (ROOT / 'pyable_tio').rglob('*.py'):
        if path.name == 'torchio_private.py':
            continue  # the list itself
        text = path.read_text()
        code = '\n'.join(line for line in text.splitlines() if not line.lstrip().startswith(('from ', 'import ')))
        found |= set(re.findall(r'\b(?:tio|torchio|torch)(?:\.\w+)*\.(_[a-z]\w*)', code))
        found |= {f'{module}.{name}' for module, name in re.findall(r'from ((?:torch|torchio)[\w.]*\._\w[\w.]*) import (\w+)', text)}
    for info in pkgutil.walk_packages(pyable_tio.__path__, 'pyable_tio.'):
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != info.name:
                continue
            bases = [b for b in cls.__mro__[1:] if b.__module__.split('.')[0] in ('torch', 'torchio')]
            source = inspect.getsource(cls)
            names = set(re.findall(r'self\.(_[a-z]\w*)', source)) | {n for n in vars(cls) if re.fullmatch(r'_[a-z]\w*', n)}
            for name in names:
                if name == '_abc_impl':
                    continue  # ABC bookkeeping of every class, not TorchIO's
                owners = [b for b in bases if name in vars(b)
                          or ('__init__' in vars(b) and f'self.{name}' in inspect.getsource(b.__init__))]
                found |= {name for _ in owners[:1]}
    return found


def test_every_private_member_used_is_listed():
    from pyable_tio.torchio_private import CLASS_MEMBERS, INSTANCE_MEMBERS

    listed = {dotted.split('.')[-1] for _, dotted, _ in CLASS_MEMBERS}
    listed |= {f'{module}.{dotted}' for module, dotted, _ in CLASS_MEMBERS}
    listed |= {attribute for _, attribute, _ in INSTANCE_MEMBERS}
    unlisted = sorted(_private_uses() - listed)
    assert not unlisted, f'private TorchIO/torch members used but not in pyable_tio/torchio_private.py: {unlisted}'
