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
