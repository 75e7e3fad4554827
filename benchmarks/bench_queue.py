"""One epoch of 3-D training patches: plain TorchIO vs pyable-tio (no cache, cold, warm) vs MONAI.

Writes a synthetic dataset (per subject a T1 on the reference grid, an oblique thick-slice T2
and an integer label map on the T1 grid), then times one epoch of a patch queue per variant:

    a  plain TorchIO: ScalarImage/LabelMap from the files, tio.Resample to the T1, tio.Queue
    b  pyable-tio, queue_from_manifest without cache
    c  pyable-tio, cold cache (empty cache folder; this epoch fills it)
    d  pyable-tio, warm cache (the folder filled by c)
    e  MONAI PersistentDataset, warm (LoadImaged + ResampleToMatchd + RandSpatialCropSamplesd)
    f  pt.monai_dataset(cache_dir=...) warm, then the same MONAI steps as e (MONAI users' path)

With ``--augment`` every row trains with the same augmentation: TorchIO's
``RandomAffine(degrees=10, scales=0.1)`` + ``RandomFlip(axes=('LR',))`` + ``RandomGamma()`` for
a-d (a: on the whole resampled subject, as ``tio.Queue`` does; b-d: ``transform=`` of
``queue_from_manifest``, run per patch), and MONAI's crop-then-augment ``RandAffined`` +
``RandFlipd`` + ``RandAdjustContrastd`` (same ranges) on each crop for e and f.

Every variant uses the same patch size, patches per volume, worker count and seed, and runs in
its own process so that its peak memory (PSS of the process tree: RSS double-counts the
pages forked workers share) is its own. Every batch is checked: shape, finite values, integer
labels from the label map's value set. Prints a table and one JSON line.

Usage:
    python benchmarks/bench_queue.py                      # default: 8 x 256x256x160, patch 96
    python benchmarks/bench_queue.py --subjects 4 --size 128 128 96 --patch 48   # smoke run
    python benchmarks/bench_queue.py --augment            # the same rows, training with augmentation
    python benchmarks/bench_queue.py --augment --engine sitk   # pyable-tio resampling with SimpleITK
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

#: --augment: TorchIO's log-gamma range, as MONAI's gamma range (RandAdjustContrastd).
LOG_GAMMA = (-0.3, 0.3)
DEGREES, SCALES = 10.0, 0.1

VARIANTS = {
    'a': 'plain TorchIO (tio.Resample + tio.Queue)',
    'b': 'pyable-tio, no cache',
    'c': 'pyable-tio, cold cache',
    'd': 'pyable-tio, warm cache',
    'e': 'MONAI PersistentDataset, warm',
    'f': 'pt.monai_dataset, warm cache (as e)',
}
LABEL_VALUES = (0, 1, 2, 7)  # pyable_tio.synthetic.LABEL_VALUES


# ----------------------------------------------------------------------------- dataset


def write_dataset(folder: Path, subjects: int, size: tuple[int, int, int], seed: int) -> Path:
    """Write (or reuse) the benchmark files; returns the manifest path (images + label map)."""
    import SimpleITK as sitk

    from pyable_tio import synthetic

    params = {'subjects': subjects, 'size': list(size), 'seed': seed, 'version': 1}
    stamp = folder / 'params.json'
    manifest_path = folder / 'manifest.json'
    if stamp.exists() and json.loads(stamp.read_text()) == params and manifest_path.exists():
        return manifest_path
    folder.mkdir(parents=True, exist_ok=True)
    spacing = (1.0, 1.0, 1.2)
    manifest = {}
    for i in range(subjects):
        name = f'sub-{i:02d}'
        t1 = synthetic.phantom(size, spacing, seed=seed + i)
        labels = synthetic.label_map(t1)
        # Oblique (15 degrees), slices twice as thick, shifted origin: needs one real resampling.
        t2 = synthetic.phantom(
            (size[0], size[1], max(2, size[2] // 2)), (spacing[0], spacing[1], spacing[2] * 2),
            (-3.0, 2.0, 1.0), synthetic.oblique_direction(15.0), seed + 100 + i,
        )
        for key, image in (('t1', t1), ('t2', t2), ('labels', labels)):
            sitk.WriteImage(image, str(folder / f'{name}_{key}.nii.gz'))
        manifest[name] = {
            'images': [f'{name}_t1.nii.gz', f'{name}_t2.nii.gz'],
            'labelmaps': [f'{name}_labels.nii.gz'],
        }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    stamp.write_text(json.dumps(params))
    return manifest_path


# ----------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak PSS (else USS, else RSS) of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.peak = 0
        self.kind = 'pss'
        self.own_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
        self.own_cpu = time.thread_time()  # subtracted from the variant's CPU time

    def sample(self) -> None:
        psutil = self._psutil
        me = psutil.Process()
        total = 0
        for process in [me, *me.children(recursive=True)]:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            value = getattr(info, 'pss', None)
            if value is None:
                self.kind = 'uss'
                value = getattr(info, 'uss', info.rss)
            total += value
        self.peak = max(self.peak, total)


# ----------------------------------------------------------------------------- checks


class BatchChecker:
    """Checks every batch of patches; counts patches."""

    def __init__(self, patch: int, channels: int) -> None:
        self.patch = patch
        self.channels = channels
        self.patches = 0

    def __call__(self, images, labels) -> None:
        import torch

        images, labels = torch.as_tensor(images), torch.as_tensor(labels)
        n = images.shape[0]
        expected = (n, self.channels, self.patch, self.patch, self.patch)
        if tuple(images.shape) != expected or tuple(labels.shape) != (n, 1, *expected[2:]):
            raise AssertionError(f'bad batch shapes {tuple(images.shape)} {tuple(labels.shape)}, expected {expected}')
        # Any NaN or inf makes the sum non-finite (one pass, no temporary).
        if not torch.isfinite(images.sum()):
            raise AssertionError('non-finite values in a batch')
        if labels.is_floating_point():  # MONAI loads label maps as float32
            if not torch.equal(labels, labels.round()) or labels.min() < 0 or labels.max() > 255:
                raise AssertionError('labels are not integers in 0..255 (interpolated?)')
            labels = labels.to(torch.uint8)
        if labels.dtype != torch.uint8:
            if labels.min() < 0 or labels.max() > 255:
                raise AssertionError(f'label values outside 0..255: {int(labels.min())}..{int(labels.max())}')
            labels = labels.to(torch.uint8)
        values = set(torch.nonzero(torch.bincount(labels.reshape(-1))).flatten().tolist())
        if not values <= set(LABEL_VALUES):
            raise AssertionError(f'label values {sorted(values)} not in {LABEL_VALUES}')
        self.patches += n


# ----------------------------------------------------------------------------- variants


def torchio_batches(args, loader_source):
    """Iterate batches of a tio.Queue (or compatible) through tio.SubjectsLoader."""
    import torchio as tio

    loader = tio.SubjectsLoader(loader_source, batch_size=args.batch_size, num_workers=0)
    for batch in loader:
        yield batch


def torchio_augmentation():
    """The --augment recipe, as TorchIO steps."""
    import torchio as tio

    return [tio.RandomAffine(degrees=DEGREES, scales=SCALES), tio.RandomFlip(axes=('LR',)),
            tio.RandomGamma(log_gamma=LOG_GAMMA)]


def run_plain_torchio(args, manifest: Path):
    import torchio as tio

    folder = manifest.parent
    subjects = []
    for name, entry in json.loads(manifest.read_text()).items():
        t1, t2 = (folder / p for p in entry['images'])
        subjects.append(tio.Subject(
            t1=tio.ScalarImage(t1), t2=tio.ScalarImage(t2), labels=tio.LabelMap(folder / entry['labelmaps'][0]),
        ))
    steps = [tio.Resample('t1')] + (torchio_augmentation() if args.augment else [])
    dataset = tio.SubjectsDataset(subjects, transform=tio.Compose(steps))
    queue = tio.Queue(
        dataset, max_length=args.max_length, samples_per_volume=args.samples_per_volume,
        sampler=_tio_sampler(args, 'labels'), num_workers=args.workers,
    )
    for batch in torchio_batches(args, queue):
        images = np.concatenate([batch['t1'][tio.DATA].numpy(), batch['t2'][tio.DATA].numpy()], axis=1)
        yield images, batch['labels'][tio.DATA]


def _tio_sampler(args, label_name: str):
    import torchio as tio

    if args.sampler == 'label':
        return tio.LabelSampler(args.patch, label_name=label_name)
    return tio.UniformSampler(args.patch)


def run_pyable(args, manifest: Path, cache_dir: Path | None):
    import torchio as tio

    import pyable_tio as pt

    kwargs = {'cache_dir': str(cache_dir)} if cache_dir is not None else {}
    if args.fast_patches != 'auto':
        kwargs['fast_patches'] = args.fast_patches == 'on'
    if args.augment:
        kwargs['transform'] = tio.Compose(torchio_augmentation())
        kwargs['engine'] = args.engine
    queue = pt.queue_from_manifest(
        manifest, patch_size=args.patch, samples_per_volume=args.samples_per_volume,
        max_length=args.max_length, sampler=args.sampler, label_name='labelmap_0',
        num_workers=args.workers, **kwargs,
    )
    for batch in torchio_batches(args, queue):
        yield batch['images'][tio.DATA], batch['labelmap_0'][tio.DATA]


def monai_recipe(args, keys: list[str], image_keys: list[str], device=None) -> tuple[list, list]:
    """MONAI's crop-then-augment steps, as (crop, augmentation on each crop) for (e) and (f);
    with ``device``, ``RandAffined`` resamples there (MONAI's GPU recipe, bench_device.py)."""
    from monai.transforms import RandAdjustContrastd, RandAffined, RandFlipd, RandSpatialCropSamplesd

    crop = [RandSpatialCropSamplesd(keys, roi_size=(args.patch,) * 3, num_samples=args.samples_per_volume,
                                    random_size=False)]
    if not args.augment:
        return crop, []
    radians = np.deg2rad(DEGREES)
    modes = tuple('bilinear' if key in image_keys else 'nearest' for key in keys)
    return crop, [
        RandAffined(keys, prob=1.0, rotate_range=(radians,) * 3, scale_range=(SCALES,) * 3, mode=modes,
                    padding_mode='zeros', device=device),
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandAdjustContrastd(image_keys, prob=1.0, gamma=tuple(float(np.exp(g)) for g in LOG_GAMMA)),
    ]


def monai_dataset(args, manifest: Path, cache_dir: Path):
    """(e): LoadImaged + EnsureChannelFirstd + ResampleToMatchd, cached by PersistentDataset."""
    from monai.data import PersistentDataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ResampleToMatchd

    folder = manifest.parent
    items = [
        {'t1': str(folder / e['images'][0]), 't2': str(folder / e['images'][1]),
         'labels': str(folder / e['labelmaps'][0])}
        for e in json.loads(manifest.read_text()).values()
    ]
    keys = ['t1', 't2', 'labels']
    crop, augment = monai_recipe(args, keys, ['t1', 't2'])
    load = [LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
            ResampleToMatchd(['t2'], key_dst='t1', mode='bilinear')]
    # Cached up to the first random step (the crop), as torch.save pickles of the resampled volumes.
    return PersistentDataset(items, transform=Compose([*load, *crop, *augment]), cache_dir=str(cache_dir))


def pyable_monai_dataset(args, manifest: Path, cache_dir: Path):
    """(f): pt.monai_dataset over pyable-tio's warm cache, then the same MONAI recipe as (e)."""
    from monai.transforms import ConcatItemsd, DeleteItemsd

    import pyable_tio as pt

    # One key per channel (stack_channels=False): each is a memory map of its cached volume, so the
    # crop copies the patches only; the two images are concatenated after it.
    crop, _ = monai_recipe(args, ['image_0', 'image_1', 'labelmap_0'], ['image_0', 'image_1'])
    _, augment = monai_recipe(args, ['images', 'labelmap_0'], ['images'])
    concat = [ConcatItemsd(['image_0', 'image_1'], 'images'), DeleteItemsd(['image_0', 'image_1'])]
    return pt.monai_dataset(manifest, transform=[*crop, *concat, *augment], cache_dir=cache_dir,
                            stack_channels=False)


def run_monai(args, manifest: Path, cache_dir: Path):
    import torch
    from monai.data import DataLoader
    from monai.utils import set_determinism

    set_determinism(seed=args.seed)
    pyable = args.variant.startswith('f')
    dataset = (pyable_monai_dataset if pyable else monai_dataset)(args, manifest, cache_dir)
    # One subject per batch: its samples_per_volume patches (list_data_collate flattens them).
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=args.workers)
    for batch in loader:
        if pyable:
            yield batch['images'].as_tensor(), batch['labelmap_0'].as_tensor()
        else:
            images = torch.cat([batch['t1'].as_tensor(), batch['t2'].as_tensor()], dim=1)
            yield images, batch['labels'].as_tensor()


def run_variant(args) -> dict:
    """Time one epoch of one variant in this process; returns its figures."""
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    manifest = Path(args.manifest)
    cache = Path(args.cache_dir) if args.cache_dir else None
    checker = BatchChecker(args.patch, channels=2)
    import torchio  # noqa: F401  (imports are not part of the epoch)

    import pyable_tio

    # pyable_tio loads its names on first use: load them here, before the clock, as the others' imports.
    pyable_tio.queue_from_manifest, pyable_tio.monai_dataset  # noqa: B018
    if args.variant[0] in 'ef':
        import monai  # noqa: F401
    with PeakMemory(args.memory_interval) as memory:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        if args.variant == 'a':
            batches = run_plain_torchio(args, manifest)
        elif args.variant in 'bcd':
            batches = run_pyable(args, manifest, cache)
        elif args.variant[0] in 'ef':
            batches = run_monai(args, manifest, cache)
        else:
            raise ValueError(args.variant)
        first, checking, checking_cpu = None, 0.0, 0.0
        for images, labels in batches:
            if first is None:
                first = time.perf_counter() - start
            # The checks are not part of the loader: their time is taken out of the figures.
            tick, tick_cpu = time.perf_counter(), time.process_time()
            checker(images, labels)
            checking += time.perf_counter() - tick
            checking_cpu += time.process_time() - tick_cpu
        elapsed = time.perf_counter() - start - checking
        del batches  # stops the loaders' workers, so that their CPU time is counted
        gc.collect()
    cpu = cpu_seconds() - cpu_start - memory.own_cpu - checking_cpu
    return {
        'variant': args.variant, 'patches': checker.patches, 'seconds': round(elapsed, 3),
        'first_batch_s': round(first or 0.0, 3), 'patches_per_s': round(checker.patches / elapsed, 2),
        'peak_mem_mb': round(memory.peak / 2**20, 1), 'mem_kind': memory.kind,
        'check_s': round(checking, 2), 'cpu_s': round(cpu, 2), 'cpu_ms_per_patch': round(1000 * cpu / max(checker.patches, 1), 1),
    }


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (the workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ----------------------------------------------------------------------------- driver


def child(args, variant: str, cache_dir: Path | None) -> dict:
    command = [
        sys.executable, __file__, '--child', variant, '--manifest', str(args.manifest),
        '--patch', str(args.patch), '--samples-per-volume', str(args.samples_per_volume),
        '--batch-size', str(args.batch_size), '--workers', str(args.workers),
        '--max-length', str(args.max_length), '--seed', str(args.seed), '--sampler', args.sampler,
        '--fast-patches', args.fast_patches, '--torch-threads', str(args.torch_threads),
        '--memory-interval', str(args.memory_interval), '--engine', args.engine,
    ] + (['--augment'] if args.augment else [])
    if cache_dir is not None:
        command += ['--cache-dir', str(cache_dir)]
    if args.profile and variant in args.profile:
        command = [sys.executable, '-m', 'cProfile', '-o', str(Path(args.profile_dir) / f'{variant}.prof')] + command[1:]
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f'variant {variant} failed:\n{process.stderr[-4000:]}')
    return json.loads(process.stdout.strip().splitlines()[-1])


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--subjects', type=int, default=8)
    parser.add_argument('--size', type=int, nargs=3, default=(256, 256, 160), metavar=('X', 'Y', 'Z'),
                        help='T1 grid size in x,y,z voxels')
    parser.add_argument('--patch', type=int, default=96, help='cubic patch side in voxels')
    parser.add_argument('--samples-per-volume', type=int, default=16)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--max-length', type=int, default=64, help='tio.Queue max_length')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--sampler', choices=('uniform', 'label'), default='uniform',
                        help='TorchIO variants only; MONAI always crops uniformly')
    parser.add_argument('--variants', default='abcdef', help='subset of abcdef to run')
    parser.add_argument('--augment', action='store_true',
                        help='train with RandomAffine(degrees=10, scales=0.1) + RandomFlip(LR) + RandomGamma'
                             ' (MONAI: RandAffined + RandFlipd + RandAdjustContrastd on each crop)')
    parser.add_argument('--engine', choices=('numba', 'sitk'), default='numba',
                        help='resampling engine of pyable-tio\'s per-patch augmentation (with --augment):'
                             ' compiled numba kernels, or SimpleITK (the oracle)')
    parser.add_argument('--fast-patches', choices=('auto', 'on', 'off'), default='auto',
                        help="pyable-tio's fast_patches option (auto: its default)")
    parser.add_argument('--torch-threads', type=int, default=1,
                        help='torch intra-op threads of the main process (0: torch default); the loaders'
                             ' collate there, and on few cores more threads than cores slow every variant')
    parser.add_argument('--repeat', type=int, default=3, help='timed runs per variant; the median is reported')
    parser.add_argument('--memory-interval', type=float, default=0.5,
                        help='seconds between memory samples (reading smaps costs CPU and locks)')
    parser.add_argument('--workdir', default=None, help='dataset and caches (default: a temporary folder)')
    parser.add_argument('--profile', default='', help='variants to run under cProfile, e.g. "d"')
    parser.add_argument('--profile-dir', default='.', help='where <variant>.prof files go')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--manifest', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--cache-dir', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        args.variant = args.child
        print(json.dumps(run_variant(args)))
        return 0

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix='bench_queue_'))
    t0 = time.perf_counter()
    args.manifest = write_dataset(workdir / 'data', args.subjects, tuple(args.size), args.seed)
    print(f'dataset: {args.subjects} subjects, T1 {tuple(args.size)} (x,y,z) + oblique thick-slice T2 + labels'
          f' in {workdir / "data"} ({time.perf_counter() - t0:.1f} s)', file=sys.stderr)
    variants = [v for v in 'abcdef' if v in args.variants]
    if not has_module('monai'):
        print('monai not installed: skipping e and f (pip install "pyable-tio[bench]")', file=sys.stderr)
        variants = [v for v in variants if v not in 'ef']
    pyable_cache = workdir / 'pyable_cache'
    monai_cache = workdir / 'monai_cache'
    results = {}
    for variant in variants:
        if variant == 'd' and 'c' not in results:
            shutil.rmtree(pyable_cache, ignore_errors=True)
            child(args, 'c', pyable_cache)  # warm it up, untimed
        if variant == 'e':
            shutil.rmtree(monai_cache, ignore_errors=True)
            child(args, 'e-warmup', monai_cache)
        if variant == 'f':
            child(args, 'f-warmup', pyable_cache)  # completes the cache (c/d's keys are the same), untimed
        cache = pyable_cache if variant in 'cdf' else monai_cache if variant == 'e' else None
        runs = []
        for _ in range(args.repeat):
            if variant == 'c':
                shutil.rmtree(pyable_cache, ignore_errors=True)  # cold every time; d then finds it warm
            runs.append(child(args, variant, cache))
        # The median run by patches/s (the machine may be shared: one run can be unlucky).
        runs.sort(key=lambda r: r['patches_per_s'])
        results[variant] = dict(runs[len(runs) // 2], runs_patches_per_s=[r['patches_per_s'] for r in runs])
        print(f'  {variant}: {[r["patches_per_s"] for r in runs]} patches/s', file=sys.stderr)
    report(args, results)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(args, results: dict) -> None:
    base = results.get('a', {}).get('patches_per_s')
    header = (f'{"variant":<44} {"first batch s":>13} {"epoch s":>8} {"patches/s":>10} {"x (a)":>7}'
              f' {"CPU ms/patch":>12} {"x (a) CPU":>9} {"peak MB":>9}')
    base_cpu = results.get('a', {}).get('cpu_ms_per_patch')
    augment = (f', augmentation RandomAffine + RandomFlip + RandomGamma (pyable-tio engine {args.engine})'
               if args.augment else '')
    print(f'\n{args.subjects} subjects, T1 {tuple(args.size)}, patch {args.patch}^3, {args.samples_per_volume}'
          f' patches/volume, batch {args.batch_size}, {args.workers} workers, sampler {args.sampler},'
          f' {os.cpu_count()} CPUs{augment}')
    print(header)
    print('-' * len(header))
    for key, r in results.items():
        ratio = r['patches_per_s'] / base if base else float('nan')
        cpu_ratio = base_cpu / r['cpu_ms_per_patch'] if base_cpu else float('nan')
        r['ratio_to_a'], r['cpu_ratio_to_a'] = round(ratio, 2), round(cpu_ratio, 2)
        label = f'({key}) {VARIANTS[key]}'
        print(f'{label:<44} {r["first_batch_s"]:>13.2f} {r["seconds"]:>8.2f} {r["patches_per_s"]:>10.1f}'
              f' {ratio:>7.2f} {r["cpu_ms_per_patch"]:>12.1f} {cpu_ratio:>9.2f} {r["peak_mem_mb"]:>9.0f}')
    if 'd' in results and 'e' in results:
        d, e = results['d'], results['e']
        print(f'(d) / (e): {d["patches_per_s"] / e["patches_per_s"]:.2f} in patches/s,'
              f' {e["cpu_ms_per_patch"] / d["cpu_ms_per_patch"]:.2f} in CPU per patch')
    if 'f' in results and 'e' in results:
        f, e = results['f'], results['e']
        ratio = f['patches_per_s'] / e['patches_per_s']
        print(f'(f) / (e): {ratio:.2f} in patches/s (MONAI users\' target >= 2: {"met" if ratio >= 2 else "NOT met"}),'
              f' {e["cpu_ms_per_patch"] / f["cpu_ms_per_patch"]:.2f} in CPU per patch')
    if args.augment:
        print_targets(results)
    summary = {
        'config': {k: getattr(args, k) for k in ('subjects', 'patch', 'samples_per_volume', 'batch_size',
                                                 'workers', 'max_length', 'seed', 'sampler', 'fast_patches',
                                                 'torch_threads', 'repeat', 'augment', 'engine')}
        | {'size': list(args.size), 'cpus': os.cpu_count()},
        'results': results,
    }
    print(json.dumps(summary))


def print_targets(results: dict) -> None:
    """The augmentation targets (issue 12) as ratios measured side by side in this run."""
    rows = [('warm cache (d) / plain TorchIO (a), patches/s', 'd', 'a', 8.0, 'patches_per_s'),
            ('warm cache (d) / MONAI warm (e), patches/s', 'd', 'e', 3.0, 'patches_per_s'),
            ('no cache (b) / plain TorchIO (a), patches/s', 'b', 'a', 2.0, 'patches_per_s')]
    print('\naugmentation targets:')
    for label, top, bottom, target, key in rows:
        if top in results and bottom in results:
            ratio = results[top][key] / results[bottom][key]
            print(f'  {label:<48} {ratio:6.2f}  (target >= {target:g}: {"met" if ratio >= target else "NOT met"})')
    if 'd' in results and 'a' in results:
        d, a = results['d']['peak_mem_mb'], results['a']['peak_mem_mb']
        print(f'  {"peak PSS warm cache (d) / plain TorchIO (a)":<48} {d / a:6.2f}'
              f'  (target <= 1: {"met" if d <= a else "NOT met"}; {d:.0f} vs {a:.0f} MB)')


if __name__ == '__main__':
    sys.exit(main())
