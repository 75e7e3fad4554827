"""Entry point of the ``pyable-tio`` console script, importable without torch.

Importing :mod:`pyable_tio` loads torch, TorchIO and SimpleITK, which takes seconds. A Ctrl-C
in that time would print a Python traceback before :func:`pyable_tio.cli.main.main` could catch it,
so the console script starts here, where the heavy import is inside a ``try``.

Example:
    $ pyable-tio --version
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: Exit code of an interrupted run (128 + SIGINT), as ``pyable_tio.cli.main`` uses.
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Import the command line and run it; Ctrl-C at any point exits with 130, no traceback.

    Example:
        >>> main(['--version'])  # doctest: +SKIP
        pyable-tio 0.1.0
    """
    try:
        from pyable_tio.cli.main import main as run

        return run(argv)
    except KeyboardInterrupt:
        print('pyable-tio: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
