"""Augmented 3-D training patches on a training device: where should augmentation run?

Same data recipe as ``bench_queue.py`` (its ``write_dataset``: per subject a T1 on the
reference grid, an oblique thick-slice T2 and a label map) and the same augmentation as its
``--augment`` rows: ``RandomAffine(degrees=10, scales=0.1)`` + ``RandomFlip(LR)`` +
``RandomGamma``, 2 image channels + labels per patch. Rows, each giving batches on ``--device``:

    torchio        plain TorchIO: tio.Resample + augmentation of whole subjects in tio.Queue's CPU workers
    monai-gpu      MONAI's GPU recipe: CacheDataset (load + resample cached) + ToDeviced +
                   RandSpatialCropSamplesd + RandAffined(device=...) + RandFlipd + RandAdjustContrastd,
                   under ThreadDataLoader (crop-then-augment, as in bench_queue's e/f)
    pyable-patch   pyable-tio per patch on CPU workers: pt.patch_loader(device=None), warm cache,
                   batches then copied to the device
    pyable-batch   pyable-tio on the batch: pt.patch_loader(device=...), warm cache

For each row: patches/s over one epoch (best of ``--repeat``, rows interleaved), time to the
first batch, and peak GPU memory (``torch.cuda.max_memory_allocated``; CUDA only). Then the
step time of a small 3-D U-Net (forward, backward, Adam step) on a batch already on the device,
and per batch while loading from the pyable rows: a loader that keeps up adds nothing.
Every batch is checked (shape, finite values, labels from the label map's values).

Usage:
    python benchmarks/bench_device.py                                   # CUDA, 8 x 256x256x160, patch 96
    python benchmarks/bench_device.py --subjects 16 --workers 8         # a bigger GPU machine
    python benchmarks/bench_device.py --device cpu --subjects 2 --size 48 40 32 --patch 24   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_queue  # noqa: E402  (the data recipe, augmentation and batch checks are shared)

ROWS = {
    'torchio': 'plain TorchIO, whole-volume augmentation in CPU workers',
    'monai-gpu': "MONAI's GPU recipe (CacheDataset + ToDeviced + RandAffined(device))",
    'pyable-patch': 'pyable-tio per patch, CPU workers',
    'pyable-batch': 'pyable-tio on the batch, on the device',
}


# ----------------------------------------------------------------------------- rows


def _queue_args(args) -> argparse.Namespace:
    """The arguments bench_queue's loaders read, with its --augment recipe."""
    return argparse.Namespace(patch=args.patch, samples_per_volume=args.samples_per_volume,
                              batch_size=args.batch_size, max_length=args.max_length, workers=args.workers,
                              sampler='uniform', augment=True, seed=args.seed, variant='e')


def run_torchio(args, manifest: Path, device):
    for images, labels in bench_queue.run_plain_torchio(_queue_args(args), manifest):
        yield _to(images, device), _to(labels, device)


def monai_gpu_dataset(args, manifest: Path, device):
    """MONAI's fast-training recipe: deterministic steps cached in memory, random ones on the device."""
    from monai.data import CacheDataset
    from monai.transforms import (Compose, ConcatItemsd, DeleteItemsd, EnsureChannelFirstd, EnsureTyped, LoadImaged,
                                  ResampleToMatchd, ToDeviced)

    folder = manifest.parent
    items = [{'t1': str(folder / e['images'][0]), 't2': str(folder / e['images'][1]),
              'labels': str(folder / e['labelmaps'][0])} for e in json.loads(manifest.read_text()).values()]
    keys = ['images', 'labels']
    crop, augment = bench_queue.monai_recipe(_queue_args(args), keys, ['images'], device=device)
    load = [LoadImaged(['t1', 't2', 'labels'], image_only=True), EnsureChannelFirstd(['t1', 't2', 'labels']),
            ResampleToMatchd(['t2'], key_dst='t1', mode='bilinear'), ConcatItemsd(['t1', 't2'], 'images'),
            DeleteItemsd(['t1', 't2']), EnsureTyped(keys, track_meta=False)]
    # CacheDataset keeps everything before the first random step (the crop) in memory.
    return CacheDataset(items, transform=Compose([*load, ToDeviced(keys, device=str(device)), *crop, *augment]),
                        cache_rate=1.0, num_workers=args.workers, progress=False)


def run_monai_gpu(args, dataset):
    from monai.data import ThreadDataLoader

    # One subject per batch: its samples_per_volume patches, flattened by list_data_collate.
    for batch in ThreadDataLoader(dataset, batch_size=1, shuffle=True, num_workers=0):
        yield _plain(batch['images']), _plain(batch['labels'])


def pyable_loader(args, manifest: Path, cache_dir: Path, device):
    import torchio as tio

    import pyable_tio as pt

    return pt.patch_loader(manifest, patch_size=args.patch, samples_per_volume=args.samples_per_volume,
                           batch_size=args.batch_size, transform=tio.Compose(bench_queue.torchio_augmentation()),
                           num_workers=args.workers, max_length=args.max_length, cache_dir=str(cache_dir),
                           device=device)


def run_pyable(loader, device):
    import torchio as tio

    for batch in loader:
        yield _to(batch['images'][tio.DATA], device), _to(batch['labelmap_0'][tio.DATA], device)


def _to(tensor, device):
    import torch

    tensor = torch.as_tensor(tensor)
    if tensor.device == device:
        return tensor
    if device.type == 'cuda':
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _plain(tensor):
    return tensor.as_tensor() if hasattr(tensor, 'as_tensor') else tensor


# ----------------------------------------------------------------------------- timing


def synchronize(device) -> None:
    import torch

    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_epoch(batches, device, checker) -> dict:
    """One epoch of ``batches`` (a generator of (images, labels) on ``device``), checked."""
    import torch

    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    start, first, checking, patches = time.perf_counter(), None, 0.0, checker.patches
    for images, labels in batches:
        synchronize(device)
        if first is None:
            first = time.perf_counter() - start
        tick = time.perf_counter()
        checker(images.cpu(), labels.cpu())  # not part of the loader: taken out of the figures
        checking += time.perf_counter() - tick
    synchronize(device)
    elapsed = time.perf_counter() - start - checking
    count = checker.patches - patches
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == 'cuda' else None
    return {'patches': count, 'seconds': round(elapsed, 3), 'patches_per_s': round(count / elapsed, 2),
            'first_batch_s': round(first or 0.0, 3), 'gpu_peak_mb': None if memory is None else round(memory, 1)}


def unet(channels: int = 2, classes: int = 8, width: int = 16):
    """A small 3-D U-Net (two levels), for the step time."""
    import torch
    from torch import nn

    def block(a: int, b: int) -> nn.Module:
        return nn.Sequential(nn.Conv3d(a, b, 3, padding=1), nn.InstanceNorm3d(b), nn.LeakyReLU(inplace=True),
                             nn.Conv3d(b, b, 3, padding=1), nn.InstanceNorm3d(b), nn.LeakyReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down1, self.down2 = block(channels, width), block(width, 2 * width)
            self.bottom = block(2 * width, 4 * width)
            self.up2, self.dec2 = nn.ConvTranspose3d(4 * width, 2 * width, 2, stride=2), block(4 * width, 2 * width)
            self.up1, self.dec1 = nn.ConvTranspose3d(2 * width, width, 2, stride=2), block(2 * width, width)
            self.head = nn.Conv3d(width, classes, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.down1(x)
            b = self.down2(nn.functional.max_pool3d(a, 2))
            c = self.bottom(nn.functional.max_pool3d(b, 2))
            b = self.dec2(torch.cat([self.up2(c), b], dim=1))
            return self.head(self.dec1(torch.cat([self.up1(b), a], dim=1)))

    return UNet()


def training_steps(args, device, loaders: dict) -> dict:
    """Mean step time of the U-Net without loading (a fixed batch) and while loading from each loader."""
    import torch

    torch.manual_seed(args.seed)
    model = unet().to(device)
    optimiser = torch.optim.Adam(model.parameters(), 1e-3)
    loss = torch.nn.CrossEntropyLoss()

    def step(images, labels) -> None:
        optimiser.zero_grad(set_to_none=True)
        target = torch.bucketize(labels[:, 0].long(), torch.tensor(bench_queue.LABEL_VALUES, device=device))
        loss(model(images.float()), target).backward()
        optimiser.step()

    images = torch.randn(args.batch_size, 2, *(args.patch,) * 3, device=device)
    labels = torch.zeros(args.batch_size, 1, *(args.patch,) * 3, dtype=torch.uint8, device=device)
    for _ in range(2):  # warm-up (cuDNN autotuning, allocator)
        step(images, labels)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(images, labels)
    synchronize(device)
    results = {'no_loading_ms': round(1000 * (time.perf_counter() - start) / args.steps, 1)}
    for name, make in loaders.items():
        count, start = 0, time.perf_counter()
        for images, labels in make():
            step(images, labels)
            count += 1
            if count == args.steps:
                break
        synchronize(device)
        results[f'{name}_ms'] = round(1000 * (time.perf_counter() - start) / max(count, 1), 1)
    return results


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda', help='training device (cuda, cuda:1, cpu)')
    parser.add_argument('--subjects', type=int, default=8)
    parser.add_argument('--size', type=int, nargs=3, default=(256, 256, 160), metavar=('X', 'Y', 'Z'))
    parser.add_argument('--patch', type=int, default=96)
    parser.add_argument('--samples-per-volume', type=int, default=16)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--max-length', type=int, default=64)
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--rows', default=','.join(ROWS), help=f'comma-separated subset of {",".join(ROWS)}')
    parser.add_argument('--repeat', type=int, default=2, help='epochs per row (interleaved); the best is reported')
    parser.add_argument('--steps', type=int, default=10, help='U-Net steps timed per setting (0: skip)')
    parser.add_argument('--torch-threads', type=int, default=0, help='torch intra-op threads (0: torch default)')
    parser.add_argument('--workdir', default=None, help='dataset and caches (default: a temporary folder)')
    args = parser.parse_args(argv)

    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('no CUDA device here: pass --device cpu')
    rows = [r for r in args.rows.split(',') if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f'unknown rows {sorted(unknown)}; rows are {list(ROWS)}')
    if 'monai-gpu' in rows and not bench_queue.has_module('monai'):
        print('monai not installed: skipping monai-gpu (pip install "pyable-tio[bench]")', file=sys.stderr)
        rows.remove('monai-gpu')
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix='bench_device_'))
    manifest = bench_queue.write_dataset(workdir / 'data', args.subjects, tuple(args.size), args.seed)
    cache = workdir / 'pyable_cache'
    checker = bench_queue.BatchChecker(args.patch, channels=2)

    setup = {}
    if 'monai-gpu' in rows:
        tick = time.perf_counter()
        monai_data = monai_gpu_dataset(args, manifest, device)
        setup['monai_cache_fill_s'] = round(time.perf_counter() - tick, 2)
    if {'pyable-patch', 'pyable-batch'} & set(rows):
        tick = time.perf_counter()
        for _ in run_pyable(pyable_loader(args, manifest, cache, None), torch.device('cpu')):
            pass  # fills the volume cache (untimed: the rows are warm)
        setup['pyable_cache_fill_s'] = round(time.perf_counter() - tick, 2)
    makers = {
        'torchio': lambda: run_torchio(args, manifest, device),
        'monai-gpu': lambda: run_monai_gpu(args, monai_data),
        'pyable-patch': lambda: run_pyable(pyable_loader(args, manifest, cache, None), device),
        'pyable-batch': lambda: run_pyable(pyable_loader(args, manifest, cache, device), device),
    }
    results: dict[str, dict] = {}
    for repeat in range(args.repeat):
        for row in rows:  # interleaved: a noisy moment hits every row alike
            torch.manual_seed(args.seed + repeat)
            run = time_epoch(makers[row](), device, checker)
            best = results.get(row)
            if best is None or run['patches_per_s'] > best['patches_per_s']:
                results[row] = dict(run, runs=(best or {}).get('runs', []) + [run['patches_per_s']])
            else:
                best['runs'].append(run['patches_per_s'])
            print(f'  {row}: {run["patches_per_s"]} patches/s', file=sys.stderr)
    steps = {}
    if args.steps:
        steps = training_steps(args, device, {r: makers[r] for r in rows if r.startswith('pyable')})
    report(args, device, rows, results, steps, setup)
    return 0


def report(args, device, rows: list[str], results: dict, steps: dict, setup: dict) -> None:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'\n{args.subjects} subjects {tuple(args.size)}, patch {args.patch}^3, {args.samples_per_volume} per volume,'
          f' batch {args.batch_size}, {args.workers} workers, device {device} ({name})')
    print(f'{"row":<14}{"patches/s":>11}{"first batch s":>15}{"GPU peak MB":>13}  what')
    for row in rows:
        r = results[row]
        memory = '-' if r['gpu_peak_mb'] is None else f'{r["gpu_peak_mb"]:.0f}'
        print(f'{row:<14}{r["patches_per_s"]:>11.2f}{r["first_batch_s"]:>15.3f}{memory:>13}  {ROWS[row]}')
    ratios = {}
    if 'pyable-batch' in results:
        ours = results['pyable-batch']['patches_per_s']
        for row in rows:
            if row != 'pyable-batch':
                ratios[f'pyable-batch / {row}'] = round(ours / results[row]['patches_per_s'], 2)
        for label, value in ratios.items():
            print(f'{label}: {value:.2f}x')
    if steps:
        print('U-Net step (ms): ' + ', '.join(f'{k[:-3].replace("_", " ")} {v}' for k, v in steps.items()))
    print(json.dumps({'device': str(device), 'device_name': name, 'results': results, 'ratios': ratios,
                      'steps_ms': steps, 'setup': setup}))


if __name__ == '__main__':
    sys.exit(main())
