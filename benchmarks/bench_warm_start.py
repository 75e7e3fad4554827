"""Warm-start speed of the volume cache: open N warm entries in a fresh process.

Fills a cache with N entries (one per synthetic source file), then runs ``--repeats`` fresh
Python processes that each open every entry through ``GridReader`` (source digest memo, key,
sidecar, stamp check, memory map) and read one voxel of it. Prints the median wall time per
process and per entry.

Example:
    $ python benchmarks/bench_warm_start.py --entries 200 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

_OPEN = textwrap.dedent(
    '''
    import json, sys, time
    from pathlib import Path
    import SimpleITK as sitk
    from pyable_tio.reader import GridReader
    from pyable_tio.cache import VolumeCache
    from pyable_tio.geometry.grid import Grid

    folder = Path(sys.argv[1])
    paths = json.loads((folder / 'paths.json').read_text())
    grid = Grid.from_dict(json.loads((folder / 'grid.json').read_text()))
    cache = VolumeCache(folder / 'cache')
    reader = GridReader(grid, 'image', 'bench', cache=cache)
    start = time.perf_counter()
    for path in paths:
        array, _ = reader(path)
        float(array[0, 0, 0, 0])
    elapsed = time.perf_counter() - start
    assert cache.counts['hits'] == len(paths), cache.counts
    print(elapsed)
    '''
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--entries', type=int, default=200)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--size', type=int, nargs=3, default=(64, 64, 48), metavar=('X', 'Y', 'Z'))
    args = parser.parse_args()

    import json

    import SimpleITK as sitk

    from pyable_tio import synthetic
    from pyable_tio.reader import GridReader
    from pyable_tio.cache import VolumeCache
    from pyable_tio.geometry.grid import Grid

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        paths = []
        for i in range(args.entries):
            path = folder / f'img{i:04d}.nii'
            sitk.WriteImage(synthetic.phantom(tuple(args.size), seed=i), str(path))
            paths.append(str(path))
        grid = Grid.from_image(sitk.ReadImage(paths[0]))
        (folder / 'paths.json').write_text(json.dumps(paths))
        (folder / 'grid.json').write_text(json.dumps(grid.to_dict()))
        reader = GridReader(grid, 'image', 'bench', cache=VolumeCache(folder / 'cache'))
        for path in paths:
            reader(path)
        times = []
        for _ in range(args.repeats):
            # cwd elsewhere: the code measured is the one PYTHONPATH names, not the current folder's.
            out = subprocess.run([sys.executable, '-c', _OPEN, str(folder)], capture_output=True, text=True, cwd=folder)
            if out.returncode:
                raise SystemExit(out.stderr)
            times.append(float(out.stdout.strip()))
        median = statistics.median(times)
        print(
            f'{args.entries} warm entries of {" x ".join(map(str, args.size))} float32, fresh process,'
            f' median of {args.repeats}: {median * 1e3:.0f} ms ({median / args.entries * 1e3:.2f} ms/entry);'
            f' all: {", ".join(f"{t * 1e3:.0f}" for t in times)} ms'
        )


if __name__ == '__main__':
    main()
