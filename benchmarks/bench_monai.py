"""MONAI's crop-then-augment recipe: pt.monai_dataset(cache_dir=...) warm vs MONAI's PersistentDataset warm.

Same synthetic dataset as ``bench_queue.py`` (its ``write_dataset``: per subject a T1, an oblique
thick-slice T2 resampled onto it, and a label map), same checks (``BatchChecker``), memory
(``PeakMemory``, PSS of the process tree) and CPU accounting. Two variants, each in its own
process, after an untimed warm-up epoch that fills its cache:

    f  pyable-tio: pt.monai_dataset(manifest, transform=recipe, cache_dir=..., stack_channels=False)
       (.npy memory maps, one key per channel: ConcatItemsd after the crop, so crops copy patches only)
    g  MONAI: PersistentDataset(LoadImaged + EnsureChannelFirstd + ResampleToMatchd + recipe)
       (torch.save pickles of the resampled volumes, cached up to the first random transform)

Recipe (both): RandSpatialCropSamplesd(num_samples=--samples-per-volume) then RandFlipd,
RandRotate90d and RandShiftIntensityd on the patches; monai.data.DataLoader, one subject per
batch (its patches), shuffled, --workers workers.

Usage:
    python benchmarks/bench_monai.py                       # 8 x 256x256x160, patch 96
    python benchmarks/bench_monai.py --subjects 4 --size 128 128 96 --patch 48 --repeat 1   # smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_queue import BatchChecker, PeakMemory, cpu_seconds, write_dataset  # noqa: E402

VARIANTS = {
    'f': 'pt.monai_dataset, warm cache',
    'g': 'MONAI PersistentDataset, warm',
}


def recipe(keys: list[str], image_keys: list[str], args) -> list:
    """MONAI's crop-then-augment steps (random, so PersistentDataset caches what comes before)."""
    from monai import transforms as mt

    return [
        mt.RandSpatialCropSamplesd(keys, roi_size=(args.patch,) * 3, num_samples=args.samples_per_volume,
                                   random_size=False),
        mt.RandFlipd(keys, prob=0.5, spatial_axis=0),
        mt.RandRotate90d(keys, prob=0.5, max_k=3),
        mt.RandShiftIntensityd(image_keys, offsets=0.1, prob=0.5),
    ]


def pyable_dataset(args, manifest: Path, cache_dir: Path):
    from monai import transforms as mt

    import pyable_tio as pt

    # One key per channel (stack_channels=False): each is a memory map of its cached volume, so the
    # crops copy only the patches; the channels are concatenated after the crop.
    keys = ['image_0', 'image_1', 'labelmap_0']
    crop = recipe(keys, ['images'], args)[0]
    concat = [mt.ConcatItemsd(['image_0', 'image_1'], 'images'), mt.DeleteItemsd(['image_0', 'image_1'])]
    augment = recipe(['images', 'labelmap_0'], ['images'], args)[1:]
    return pt.monai_dataset(manifest, transform=[crop, *concat, *augment], cache_dir=cache_dir, stack_channels=False)


def persistent_dataset(args, manifest: Path, cache_dir: Path):
    from monai import transforms as mt
    from monai.data import PersistentDataset

    folder = manifest.parent
    items = [
        {'t1': str(folder / e['images'][0]), 't2': str(folder / e['images'][1]),
         'labels': str(folder / e['labelmaps'][0])}
        for e in json.loads(manifest.read_text()).values()
    ]
    keys = ['t1', 't2', 'labels']
    transform = mt.Compose([
        mt.LoadImaged(keys, image_only=True),
        mt.EnsureChannelFirstd(keys),
        mt.ResampleToMatchd(['t2'], key_dst='t1', mode='bilinear'),
        mt.ConcatItemsd(['t1', 't2'], 'images'),
        mt.DeleteItemsd(['t1', 't2']),
        *recipe(['images', 'labels'], ['images'], args),
    ])
    return PersistentDataset(items, transform=transform, cache_dir=str(cache_dir))


def run_variant(args) -> dict:
    import torch
    from monai.data import DataLoader
    from monai.utils import set_determinism

    import pyable_tio  # noqa: F401  (imports are not part of the epoch)

    torch.set_num_threads(args.torch_threads or torch.get_num_threads())
    set_determinism(seed=args.seed)
    manifest, cache = Path(args.manifest), Path(args.cache_dir)
    checker = BatchChecker(args.patch, channels=2)
    label_key = 'labelmap_0' if args.variant.startswith('f') else 'labels'
    with PeakMemory(args.memory_interval) as memory:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        build = pyable_dataset if args.variant.startswith('f') else persistent_dataset
        loader = DataLoader(build(args, manifest, cache), batch_size=1, shuffle=True, num_workers=args.workers)
        first, checking, checking_cpu = None, 0.0, 0.0
        for batch in loader:
            if first is None:
                first = time.perf_counter() - start
            tick, tick_cpu = time.perf_counter(), time.process_time()
            checker(batch['images'].as_tensor(), batch[label_key].as_tensor())
            checking += time.perf_counter() - tick
            checking_cpu += time.process_time() - tick_cpu
        elapsed = time.perf_counter() - start - checking
        del loader
        gc.collect()
    cpu = cpu_seconds() - cpu_start - memory.own_cpu - checking_cpu
    return {
        'variant': args.variant, 'patches': checker.patches, 'seconds': round(elapsed, 3),
        'first_batch_s': round(first or 0.0, 3), 'patches_per_s': round(checker.patches / elapsed, 2),
        'peak_mem_mb': round(memory.peak / 2**20, 1), 'cpu_ms_per_patch': round(1000 * cpu / max(checker.patches, 1), 1),
    }


def child(args, variant: str, cache_dir: Path) -> dict:
    command = [
        sys.executable, __file__, '--child', variant, '--manifest', str(args.manifest), '--cache-dir', str(cache_dir),
        '--patch', str(args.patch), '--samples-per-volume', str(args.samples_per_volume),
        '--workers', str(args.workers), '--seed', str(args.seed), '--torch-threads', str(args.torch_threads),
        '--memory-interval', str(args.memory_interval),
    ]
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f'variant {variant} failed:\n{process.stderr[-4000:]}')
    return json.loads(process.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--subjects', type=int, default=8)
    parser.add_argument('--size', type=int, nargs=3, default=(256, 256, 160), metavar=('X', 'Y', 'Z'))
    parser.add_argument('--patch', type=int, default=96)
    parser.add_argument('--samples-per-volume', type=int, default=16)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--torch-threads', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=3, help='timed runs per variant; the median is reported')
    parser.add_argument('--memory-interval', type=float, default=0.5)
    parser.add_argument('--workdir', default=None, help='dataset and caches (default: a temporary folder)')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--manifest', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--cache-dir', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.variant = args.child
        print(json.dumps(run_variant(args)))
        return 0

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix='bench_monai_'))
    args.manifest = write_dataset(workdir / 'data', args.subjects, tuple(args.size), args.seed)
    results = {}
    for variant in VARIANTS:
        cache = workdir / f'cache_{variant}'
        shutil.rmtree(cache, ignore_errors=True)
        child(args, f'{variant}-warmup', cache)  # fills the cache, untimed
        runs = sorted((child(args, variant, cache) for _ in range(args.repeat)), key=lambda r: r['patches_per_s'])
        results[variant] = dict(runs[len(runs) // 2], runs_patches_per_s=[r['patches_per_s'] for r in runs])
        print(f'  {variant}: {[r["patches_per_s"] for r in runs]} patches/s', file=sys.stderr)
    print(f'\n{args.subjects} subjects, T1 {tuple(args.size)}, patch {args.patch}^3, {args.samples_per_volume}'
          f' patches/volume, {args.workers} workers, {os.cpu_count()} CPUs')
    header = f'{"variant":<40} {"first batch s":>13} {"epoch s":>8} {"patches/s":>10} {"CPU ms/patch":>12} {"peak MB":>8}'
    print(header)
    print('-' * len(header))
    for key, r in results.items():
        print(f'{"(" + key + ") " + VARIANTS[key]:<40} {r["first_batch_s"]:>13.2f} {r["seconds"]:>8.2f}'
              f' {r["patches_per_s"]:>10.1f} {r["cpu_ms_per_patch"]:>12.1f} {r["peak_mem_mb"]:>8.0f}')
    f, g = results['f'], results['g']
    ratio, cpu_ratio = f['patches_per_s'] / g['patches_per_s'], g['cpu_ms_per_patch'] / f['cpu_ms_per_patch']
    print(f'(f) / (g): {ratio:.2f} in patches/s, {cpu_ratio:.2f} in CPU per patch')
    config = {'subjects': args.subjects, 'size': list(args.size), 'patch': args.patch, 'workers': args.workers,
              'samples_per_volume': args.samples_per_volume, 'repeat': args.repeat, 'cpus': os.cpu_count()}
    print(json.dumps({'config': config, 'results': results, 'ratio_patches_per_s': round(ratio, 2)}))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
