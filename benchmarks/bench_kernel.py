"""Per-voxel cost of pyable-tio's numba kernels against SimpleITK's Resample, and a whole augmented patch.

In one process, one thread, interleaved, min of N (the machine may be shared: report ratios):

1. a 118^3 float32 box resampled onto a rotated and scaled 96^3 grid: SimpleITK ``Resample``
   (one call per channel) against the numba kernel (``pyable_tio.patching.kernel.sample``),
   trilinear (1 and 2 channels sharing the coordinates) and nearest (uint8 labels);
2. a whole augmented patch (2 images as two files + a label map, RandomAffine + RandomFlip +
   RandomGamma) through ``augment_patch`` with ``engine="numba"`` and ``engine="sitk"``;
3. CPU time per patch as the queue cuts them (``SubjectPatches.patches``), per engine, with and
   without ``RandomElasticDeformation``;
4. the first call of each kernel in a fresh process (compilation, or loading numba's disk cache).

Usage:
    python benchmarks/bench_kernel.py [--repeat 15] [--patch 96]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def _min_time(function, repeat: int) -> float:
    best = float('inf')
    for _ in range(repeat):
        tick = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - tick)
    return best


def interpolation(repeat: int, patch: int) -> dict:
    import SimpleITK as sitk

    from pyable_tio.patching import kernel

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    rng = np.random.default_rng(0)
    box_side = int(round(patch * 1.23))
    images = [rng.normal(100, 20, (box_side,) * 3).astype(np.float32) for _ in range(2)]
    labels = rng.integers(0, 5, (box_side,) * 3).astype(np.uint8)
    # A rotation (10, -7, 15 degrees) and a scaling about the box centre, output to input.
    angles = np.radians([10.0, -7.0, 15.0])
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rotation = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
                @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    linear = rotation @ np.diag([1.08, 0.95, 1.02])
    centre_in, centre_out = np.full(3, (box_side - 1) / 2), np.full(3, (patch - 1) / 2)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre_in - linear @ centre_out
    out = np.empty((1, patch, patch, patch), np.float32)
    out2 = np.empty((2, patch, patch, patch), np.float32)
    out_labels = np.empty((1, patch, patch, patch), np.uint8)
    stacked = np.stack(images)  # a two-channel file
    whole = ((0, 0, 0), (box_side,) * 3)

    # SimpleITK: index (x, y, z) is the array's (W, H, D); the same map in its axis order.
    permute = np.eye(4)[[2, 1, 0, 3]]
    itk = permute @ matrix @ permute
    transform = sitk.AffineTransform(itk[:3, :3].ravel().tolist(), itk[:3, 3].tolist())
    sources = [sitk.GetImageFromArray(a) for a in images]
    label_source = sitk.GetImageFromArray(labels)

    def resample(source, interpolator, pixel):
        return sitk.Resample(source, [patch] * 3, transform, interpolator, (0.0,) * 3, (1.0,) * 3,
                             (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.0, pixel)

    kernel.sample([images[0][None]], whole, matrix, out, [0.0], False)  # compiled (or loaded) before timing
    kernel.sample([labels[None]], whole, matrix, out_labels, [0.0], True)
    kernel.sample([stacked], whole, matrix, out2, [0.0, 0.0], False)
    check = sitk.GetArrayFromImage(resample(sources[0], sitk.sitkLinear, sitk.sitkFloat32))
    assert np.allclose(check, out[0], rtol=1e-5, atol=1e-4), float(np.abs(check - out[0]).max())
    check = sitk.GetArrayFromImage(resample(label_source, sitk.sitkNearestNeighbor, sitk.sitkUInt8))
    assert np.array_equal(check, out_labels[0])
    rows = {}
    for _ in range(3):  # interleaved rounds, min of all
        timings = {
            'sitk linear, 1 channel': _min_time(lambda: resample(sources[0], sitk.sitkLinear, sitk.sitkFloat32), repeat),
            'numba linear, 1 channel': _min_time(lambda: kernel.sample([images[0][None]], whole, matrix, out, [0.0], False), repeat),
            'sitk linear, 2 channels': _min_time(lambda: [resample(s, sitk.sitkLinear, sitk.sitkFloat32) for s in sources], repeat),
            'numba linear, 2 channels (one file)': _min_time(lambda: kernel.sample([stacked], whole, matrix, out2, [0.0, 0.0], False), repeat),
            'sitk nearest, uint8 labels': _min_time(lambda: resample(label_source, sitk.sitkNearestNeighbor, sitk.sitkUInt8), repeat),
            'numba nearest, uint8 labels': _min_time(lambda: kernel.sample([labels[None]], whole, matrix, out_labels, [0.0], True), repeat),
        }
        for key, value in timings.items():
            rows[key] = min(rows.get(key, float('inf')), value)
    voxels = patch ** 3
    return {key: {'ms': round(1e3 * value, 2), 'ns_per_voxel': round(1e9 * value / voxels, 2)} for key, value in rows.items()}


def whole_patch(repeat: int, patch: int) -> dict:
    import tempfile
    from pathlib import Path

    import SimpleITK as sitk
    import torch
    import torchio as tio

    import pyable_tio as pt
    from pyable_tio import synthetic
    from pyable_tio.patching.augment import augment_patch
    from pyable_tio.patching.volume import Volume

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix='bench_kernel_'))
    side = int(patch * 1.6)
    direction = np.asarray(synthetic.oblique_direction(15.0, 'z')).reshape(3, 3)
    t1 = synthetic.phantom((side, side, side), (1.0, 1.0, 1.2), (0.0, 0.0, 0.0), tuple(direction.ravel()), seed=1)
    sitk.WriteImage(t1, str(folder / 't1.nii.gz'))
    sitk.WriteImage(t1 * 0.7 + 5.0, str(folder / 't2.nii.gz'))
    sitk.WriteImage(synthetic.label_map(t1), str(folder / 'labels.nii.gz'))
    manifest = {'s': {'images': [str(folder / 't1.nii.gz'), str(folder / 't2.nii.gz')],
                      'labelmaps': [str(folder / 'labels.nii.gz')]}}
    subject = pt.subjects_from_manifest(manifest, cache_dir=folder / 'cache')[0]
    volumes = {n: Volume.of(i) for n, i in subject.get_images_dict(intensity_only=False).items()}
    for volume in volumes.values():
        volume.read()  # pages in memory: the warm cache
    # The bench_queue --augment recipe, every step firing (the flip on every axis).
    transform = tio.Compose([tio.RandomAffine(degrees=10, scales=0.1), tio.RandomFlip(axes=(0, 1, 2), flip_probability=1),
                             tio.RandomGamma(log_gamma=(-0.3, 0.3))])
    ops = pt.plan_transform(transform).patch_ops
    start = ((side - patch) // 2,) * 3
    size = (patch,) * 3

    def run(engine, seed=[0]):  # noqa: B006  (a new draw every call)
        seed[0] += 1
        return augment_patch(ops, subject, volumes, start, size, torch.Generator().manual_seed(seed[0]), engine=engine)

    run('numba')
    rows = {}
    for _ in range(3):
        for engine in ('sitk', 'numba'):
            rows[engine] = min(rows.get(engine, float('inf')), _min_time(lambda: run(engine), repeat))
    return {f'{engine} engine': {'ms': round(1e3 * value, 1)} for engine, value in rows.items()}


def queue_patches(repeat: int, patch: int) -> dict:
    """CPU ms per patch as the queue cuts them (``SubjectPatches.patches``: draw, read, augment,
    build the patch subject), 8 patches of one subject, per engine, with and without elastic."""
    import tempfile
    from pathlib import Path

    import SimpleITK as sitk
    import torch
    import torchio as tio

    import pyable_tio as pt
    from pyable_tio import synthetic
    from pyable_tio.patching.cutting import SubjectPatches

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix='bench_kernel_queue_'))
    t1 = synthetic.phantom((int(patch * 1.7),) * 2 + (int(patch * 1.05),), (1.0, 1.0, 1.2), seed=1)
    sitk.WriteImage(t1, str(folder / 't1.nii.gz'))
    sitk.WriteImage(t1 * 0.7 + 5.0, str(folder / 't2.nii.gz'))
    sitk.WriteImage(synthetic.label_map(t1), str(folder / 'labels.nii.gz'))
    manifest = {'s': {'images': [str(folder / 't1.nii.gz'), str(folder / 't2.nii.gz')],
                      'labelmaps': [str(folder / 'labels.nii.gz')]}}
    subjects = pt.subjects_from_manifest(manifest, cache_dir=folder / 'cache')
    recipes = {
        'affine+flip+gamma': [tio.RandomAffine(degrees=10, scales=0.1), tio.RandomFlip(axes=('LR',)), tio.RandomGamma()],
        'affine+elastic+flip+gamma': [tio.RandomAffine(degrees=10, scales=0.1),
                                      tio.RandomElasticDeformation(max_displacement=5),
                                      tio.RandomFlip(axes=('LR',)), tio.RandomGamma()],
    }
    rows = {}
    for recipe, steps in recipes.items():
        dataset = tio.SubjectsDataset(subjects, transform=tio.Compose(steps))
        cutters = {engine: SubjectPatches(dataset, tio.UniformSampler(patch), 8, engine=engine) for engine in ('sitk', 'numba')}
        for cutter in cutters.values():
            cutter.patches(0, torch.Generator().manual_seed(0))
        best = {}
        for round_ in range(max(2, repeat // 4)):
            for engine, cutter in cutters.items():
                tick = time.process_time()
                cutter.patches(0, torch.Generator().manual_seed(round_))
                best[engine] = min(best.get(engine, float('inf')), (time.process_time() - tick) / 8)
        for engine, value in best.items():
            rows[f'{recipe}, {engine}'] = {'cpu_ms_per_patch': round(1e3 * value, 1)}
    return rows


FIRST_CALL = '''
import time, numpy as np
tick = time.perf_counter()
from pyable_tio.patching import kernel
imported = time.perf_counter() - tick
box = np.zeros((1, 20, 20, 20), np.float32); out = np.empty((1, 8, 8, 8), np.float32)
tick = time.perf_counter()
kernel.sample([box], ((0, 0, 0), (20, 20, 20)), np.eye(4) * 1.01, out, [0.0], False)
print(imported, time.perf_counter() - tick)
'''


def first_call() -> dict:
    """numba's import and the first kernel call in a fresh process (disk cache warm after the first run)."""
    runs = [subprocess.run([sys.executable, '-c', FIRST_CALL], capture_output=True, text=True, check=True)
            for _ in range(2)]
    (import_s, call_s), (import_again, call_again) = (map(float, r.stdout.split()) for r in runs)
    return {'import numba + kernels s': round(min(import_s, import_again), 3),
            'first call, cached kernels s': round(call_again, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeat', type=int, default=15)
    parser.add_argument('--patch', type=int, default=96)
    args = parser.parse_args(argv)
    results = {'interpolation': interpolation(args.repeat, args.patch), 'patch': whole_patch(args.repeat, args.patch),
               'queue patches': queue_patches(args.repeat, args.patch), 'start-up': first_call()}
    for section, rows in results.items():
        print(f'\n{section}')
        for key, value in rows.items():
            print(f'  {key:<40} {value}')
    inter, whole = results['interpolation'], results['patch']
    print(f'\nsitk / numba: linear 1 channel {inter["sitk linear, 1 channel"]["ms"] / inter["numba linear, 1 channel"]["ms"]:.2f}x,'
          f' 2 channels {inter["sitk linear, 2 channels"]["ms"] / inter["numba linear, 2 channels (one file)"]["ms"]:.2f}x,'
          f' nearest {inter["sitk nearest, uint8 labels"]["ms"] / inter["numba nearest, uint8 labels"]["ms"]:.2f}x,'
          f' whole patch {whole["sitk engine"]["ms"] / whole["numba engine"]["ms"]:.2f}x')
    for recipe in ('affine+flip+gamma', 'affine+elastic+flip+gamma'):
        queue = results['queue patches']
        ratio = queue[f'{recipe}, sitk']['cpu_ms_per_patch'] / queue[f'{recipe}, numba']['cpu_ms_per_patch']
        print(f'queue patches, {recipe}: sitk / numba {ratio:.2f}x in CPU per patch')
    print(json.dumps(results))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
