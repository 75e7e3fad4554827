"""``python -m pyable_tio_cli``: the console script's entry point, run as a module."""

from __future__ import annotations

import sys

from . import main

if __name__ == '__main__':
    sys.exit(main())
