"""Entry point of the ``pyable-tio`` console script, importable without torch.

Parsing the command line imports neither torch, TorchIO nor SimpleITK (``pyable_tio`` loads
its names lazily), so ``--help``, ``--version`` and a usage error answer at once
(benchmarks/bench_cli_start.py). A command imports what it needs when it starts, which takes
seconds; a Ctrl-C in that time exits with 130 and one line, never a Python traceback.

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
