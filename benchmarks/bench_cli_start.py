"""Start-up time of the ``pyable-tio`` command line: ``--help``, ``--version``, a usage error.

Each case runs ``--repeats`` fresh Python processes (the console script's entry point,
``pyable_tio_cli.main``) and prints the median and minimum wall time, next to a bare
``python -c pass`` (the interpreter's own start) and ``import torch`` for scale. The target
(issue 20) is under 0.5 s for ``--help``: parsing must not import torch, TorchIO or SimpleITK.

Example:
    $ python benchmarks/bench_cli_start.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

_RUN = 'import sys; from pyable_tio_cli import main; sys.exit(main({argv!r}))'
CASES = {
    'python -c pass': 'pass',
    'pyable-tio --help': _RUN.format(argv=['--help']),
    'pyable-tio --version': _RUN.format(argv=['--version']),
    'pyable-tio (usage error)': _RUN.format(argv=['cache', 'm.json', '--workers', 'x']),
    'pyable-tio validate --help': _RUN.format(argv=['validate', '--help']),
    'import torch': 'import torch',
}


def time_case(code: str, repeats: int) -> list[float]:
    """Wall times of ``repeats`` fresh processes running ``code``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, '-c', code], capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    results = {}
    for _ in range(2):  # interleaved rounds: a noisy machine hits every case alike
        for name, code in CASES.items():
            results.setdefault(name, []).extend(time_case(code, max(1, args.repeats // 2)))
    width = max(map(len, CASES))
    print(f'{"case":<{width}}  median (s)  min (s)')
    for name, times in results.items():
        print(f'{name:<{width}}  {statistics.median(times):10.3f}  {min(times):7.3f}')
    print(json.dumps({name: min(times) for name, times in results.items()}))


if __name__ == '__main__':
    main()
