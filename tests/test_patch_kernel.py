"""The numba engine equals the SimpleITK engine (the oracle), op by op and for composed chains.

The subject is oblique (rotated about two axes) and anisotropic, with a two-file image and a
label map. For the same seed both engines draw the same parameters; labels must be identical
(values and dtype) and images equal within 1e-5 relative to the image's range.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.patching import kernel
from pyable_tio.patching.augment import augment_patch
from pyable_tio.patching.ops.base import REGISTRY
from pyable_tio.patching.ops.registry import op_for
from pyable_tio.patching.volume import Volume

SIZE_XYZ = (30, 26, 18)
SPACING_XYZ = (0.9, 1.2, 2.0)
PATCH = (8, 12, 10)  # D, H, W
STARTS = [(0, 0, 0), (4, 6, 9), (10, 14, 20)]  # a corner (padding), the interior, the far corner
ELASTIC = dict(num_control_points=5, max_displacement=2.0)
ORDER2 = [0.3, -0.2, 0.1, 0.25, -0.15, 0.05, 0.2, -0.1, 0.12, 0.08]
CONTROL_POINTS = np.random.default_rng(0).uniform(-2, 2, (7, 7, 7, 3))

# Every registered op (checked below), random and fixed forms, and composed chains.
TRANSFORMS = {
    'random_affine': tio.RandomAffine(degrees=15, scales=0.15, translation=3),
    'affine_minimum_pad': tio.Affine((1.1, 0.9, 1.0), (8.0, -5.0, 12.0), (1.0, 0.0, -2.0), default_pad_value='minimum'),
    'affine_mean_pad_nearest': tio.RandomAffine(degrees=20, default_pad_value='mean', image_interpolation='nearest'),
    'affine_images_only_then_flip_all': tio.Compose([tio.RandomAffine(degrees=10, include=['images']),
                                                     tio.RandomFlip(axes=(0, 1, 2))]),
    'affine_bspline_images': tio.RandomAffine(degrees=10, image_interpolation='bspline'),  # SimpleITK on both
    'random_flip': tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.7),
    'flip': tio.Flip(axes=('LR',)),
    'pyable_flip': pt.transforms.RandomFlip(axes=('D', 'W'), p_axis=0.6),
    'random_elastic': tio.RandomElasticDeformation(**ELASTIC),
    'elastic': tio.ElasticDeformation(control_points=CONTROL_POINTS, max_displacement=(2.0, 2.0, 2.0)),
    'random_gamma': tio.RandomGamma(),
    'gamma': tio.Gamma(0.8),
    'noise': tio.RandomNoise(std=(0.1, 0.3)),
    'clamp': tio.Clamp(5, 40),
    'random_blur': tio.RandomBlur(std=(0.5, 1.5)),
    'blur': tio.Blur(std=(1.0, 1.5, 1.0)),
    'random_bias': tio.RandomBiasField(),
    'bias': tio.BiasField(coefficients=ORDER2, order=2),
    'znorm': tio.ZNormalization(),
    'rescale': tio.RescaleIntensity(out_min_max=(-1, 1), percentiles=(2, 98)),
    'pyable_normalization': pt.transforms.IntensityNormalization(),
    'affine_flip_gamma': tio.Compose([tio.RandomAffine(degrees=10, scales=0.1), tio.RandomFlip(), tio.RandomGamma()]),
    'two_elastic': tio.Compose([tio.RandomElasticDeformation(**ELASTIC), tio.RandomElasticDeformation(**ELASTIC)]),
    'all_spatial': tio.Compose([tio.RandomAffine(degrees=10, scales=0.1), tio.RandomElasticDeformation(**ELASTIC),
                                tio.RandomFlip(axes=(0, 1, 2))]),
    'statistics_spatial_intensity_late_flip': tio.Compose([
        tio.ZNormalization(), tio.RandomBlur(std=(0.5, 1.0)), tio.RandomAffine(degrees=12), tio.RandomGamma(),
        tio.RandomNoise(std=0.05), tio.RandomFlip(axes=(0, 2), flip_probability=1.0)]),
}


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp('oblique2')
    direction = np.asarray(synthetic.oblique_direction(20.0, 'z')).reshape(3, 3) @ np.asarray(
        synthetic.oblique_direction(12.0, 'x')).reshape(3, 3)
    t1 = synthetic.phantom(SIZE_XYZ, SPACING_XYZ, (-10.0, 4.0, 7.0), tuple(direction.ravel()), seed=3)
    t2 = synthetic.phantom(SIZE_XYZ, SPACING_XYZ, (-10.0, 4.0, 7.0), tuple(direction.ravel()), seed=5)
    sitk.WriteImage(t1, str(folder / 't1.nii.gz'))
    sitk.WriteImage(t2 * 0.5 + 3.0, str(folder / 't2.nii.gz'))
    sitk.WriteImage(synthetic.label_map(t1), str(folder / 'labels.nii.gz'))
    path = folder / 'manifest.json'
    path.write_text(json.dumps({'sub-00': {'images': ['t1.nii.gz', 't2.nii.gz'], 'labelmaps': ['labels.nii.gz']}}))
    return path


@pytest.fixture(scope='module')
def subject(manifest):
    return pt.subjects_from_manifest(manifest)[0]


def patch(subject, transform, start, seed, engine, volumes=None):
    plan = pt.plan_transform(transform)
    assert plan.per_patch, plan.table()
    volumes = volumes or {n: Volume.of(i) for n, i in subject.get_images_dict(intensity_only=False).items()}
    tensors, applied = augment_patch(plan.patch_ops, subject, volumes, start, PATCH, torch.Generator().manual_seed(seed),
                                     engine=engine)
    return tensors, applied


def assert_engines_agree(ours, oracle):
    assert ours.keys() == oracle.keys()
    for name in ours:
        a, b = ours[name], oracle[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if name.startswith('labelmap'):
            assert torch.equal(a, b), f'{int((a != b).sum())} label voxels differ'
        else:
            scale = float(b.abs().max())
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5 * scale)


def test_every_registered_op_is_covered():
    covered = {type(op_for(step)) for transform in TRANSFORMS.values()
               for step in (transform.transforms if isinstance(transform, tio.Compose) else [transform])}
    assert set(REGISTRY.values()) <= covered


@pytest.mark.parametrize('name', list(TRANSFORMS))
def test_kernel_equals_simpleitk(subject, name):
    transform = TRANSFORMS[name]
    fired = set()
    for seed in range(3):
        for start in STARTS:
            ours, applied = patch(subject, transform, start, seed, 'numba')
            oracle, applied_oracle = patch(subject, transform, start, seed, 'sitk')
            assert [type(s) for s in applied] == [type(s) for s in applied_oracle]  # the same draws
            fired |= {type(s) for s in applied}
            assert_engines_agree(ours, oracle)
            assert set(torch.unique(ours['labelmap_0']).tolist()) <= set(synthetic.LABEL_VALUES)  # never invented
    assert fired  # something ran


def test_deterministic_patch_is_the_whole_volume_cropped(subject):
    """About the patch centre with TorchIO's minimum padding at the border: bit for bit on the
    SimpleITK engine, within 1e-5 of it (relative to the range) on the numba engine."""
    params = dict(scales=(1.08, 0.93, 1.02), degrees=(7.3, -4.1, 11.7), translation=(1.5, -2.0, 0.7))
    for start in STARTS:
        loaded = copy.deepcopy(subject)
        loaded.load()
        centre = loaded['images'].affine[:3, :3] @ (np.asarray(start) + (np.asarray(PATCH) - 1) / 2)
        centre = centre + loaded['images'].affine[:3, 3]
        for image in loaded.get_images(intensity_only=False):
            moved = image.affine.copy()
            moved[:3, 3] -= centre
            image.affine = moved
        whole = tio.Affine(**params, center='origin', default_pad_value='minimum')(loaded)
        region = (slice(None), *(slice(a, a + n) for a, n in zip(start, PATCH)))
        expected = whole['images'].data[region]
        oracle, _ = patch(subject, tio.Affine(**params, default_pad_value='minimum'), start, 0, 'sitk')
        ours, _ = patch(subject, tio.Affine(**params, default_pad_value='minimum'), start, 0, 'numba')
        assert torch.equal(oracle['images'], expected)
        assert torch.equal(oracle['labelmap_0'], whole['labelmap_0'].data[region].to(torch.uint8))
        assert_engines_agree(ours, oracle)


def test_identity_draws_are_crops_without_interpolation(subject, monkeypatch):
    """Flips only, or an affine step that did not fire: a crop (reversed), no kernel runs."""
    monkeypatch.setattr(kernel, 'sample', lambda *a, **k: pytest.fail('interpolated'))
    for transform in (tio.RandomFlip(axes=(0, 1, 2), flip_probability=1.0),
                      tio.Compose([tio.RandomAffine(degrees=10, p=0.0), tio.Flip(axes=(1,))]),
                      tio.Affine(1.0, 0.0, (0.0, 0.0, 0.0))):
        for start in STARTS:
            ours, _ = patch(subject, transform, start, 0, 'numba')
            oracle, _ = patch(subject, transform, start, 0, 'sitk')
            for name in ours:
                assert torch.equal(ours[name], oracle[name])


def test_one_elastic_step_is_evaluated_by_the_kernel(subject, monkeypatch):
    """The B-spline of a single elastic step is the kernel's own (ITK's cubic B-spline), not
    SimpleITK's displacement field (1 s per 96^3 patch); it is proved equal above."""
    monkeypatch.setattr(sitk, 'TransformToDisplacementField', lambda *a, **k: pytest.fail('SimpleITK field'))
    ours, applied = patch(subject, TRANSFORMS['all_spatial'], (4, 6, 9), 0, 'numba')
    assert tio.RandomElasticDeformation in {type(s) for s in applied}


def test_sources_are_sampled_in_their_stored_dtype(subject):
    """An int16 image and a uint16 label map (widened to int32, as TorchIO reads it), sampled as stored."""
    loaded = copy.deepcopy(subject)
    loaded.load()
    image = tio.ScalarImage(tensor=(loaded['images'].data * 100).to(torch.int16), affine=loaded['images'].affine)
    label = tio.LabelMap(tensor=loaded['labelmap_0'].data.to(torch.int32) * 1000, affine=loaded['images'].affine)
    converted = tio.Subject(images=image, labelmap_0=label)
    transform = tio.Compose([tio.RandomAffine(degrees=15, scales=0.1), tio.RandomFlip()])
    for seed in range(3):
        ours, _ = patch(converted, transform, (4, 6, 9), seed, 'numba')
        oracle, _ = patch(converted, transform, (4, 6, 9), seed, 'sitk')
        assert ours['labelmap_0'].dtype == torch.int32
        assert_engines_agree(ours, oracle)


def test_big_endian_sources_are_sampled_as_native_ones():
    """A reader may hand over big-endian arrays (NIfTI written on another machine): same values."""
    source = np.random.default_rng(0).normal(100, 20, (1, 12, 12, 12)).astype('>f4')
    box, shift = ((0, 0, 0), (12, 12, 12)), np.array([[1, 0, 0, .3], [0, 1, 0, .6], [0, 0, 1, .2]])
    ours, native = np.empty((1, 8, 8, 8), np.float32), np.empty((1, 8, 8, 8), np.float32)
    kernel.sample([source], box, shift, ours, [0.0], False)
    kernel.sample([source.astype('<f4')], box, shift, native, [0.0], False)
    assert np.array_equal(ours, native)


def test_cached_memory_maps_feed_the_kernel(manifest, tmp_path):
    cached = pt.subjects_from_manifest(manifest, cache_dir=tmp_path / 'cache')[0]
    volumes = {n: Volume.of(i) for n, i in cached.get_images_dict(intensity_only=False).items()}
    transform = TRANSFORMS['affine_flip_gamma']
    for seed in range(2):
        ours, _ = patch(cached, transform, (4, 6, 9), seed, 'numba', volumes)
        oracle, _ = patch(cached, transform, (4, 6, 9), seed, 'sitk', volumes)
        assert_engines_agree(ours, oracle)


def test_queue_engines_give_the_same_patches(manifest):
    batches = {}
    for engine in ('numba', 'sitk'):
        torch.manual_seed(11)
        queue = pt.queue_from_manifest(manifest, patch_size=PATCH, samples_per_volume=3, max_length=3,
                                       transform=TRANSFORMS['affine_flip_gamma'], shuffle_patches=False, engine=engine)
        assert queue.engine == engine and queue.plan.per_patch
        batches[engine] = next(iter(tio.SubjectsLoader(queue, batch_size=3)))
    for key in ('images', 'labelmap_0'):
        assert_engines_agree({key: batches['numba'][key][tio.DATA]}, {key: batches['sitk'][key][tio.DATA]})
    with pytest.raises(ValueError, match="engine must be one of"):
        pt.queue_from_manifest(manifest, patch_size=PATCH, samples_per_volume=1, max_length=1, engine='torch')


def test_numba_is_imported_only_when_the_kernels_run():
    code = ('import sys, pyable_tio, pyable_tio.patching.queue, pyable_tio.patching.augment;'
            ' import pyable_tio_cli; assert "numba" not in sys.modules, "numba imported"')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, '-c', code], check=True, env=env)


def test_kernels_cache_to_a_writable_folder(monkeypatch, tmp_path):
    """Both numba's folders read-only: a temporary folder is set as NUMBA_CACHE_DIR."""
    monkeypatch.delenv('NUMBA_CACHE_DIR', raising=False)
    monkeypatch.setattr(os, 'access', lambda path, mode: False)
    monkeypatch.setattr('tempfile.gettempdir', lambda: str(tmp_path))
    folder = kernel.cache_folder()
    assert folder and folder.startswith(str(tmp_path)) and os.environ['NUMBA_CACHE_DIR'] == folder
    monkeypatch.setenv('NUMBA_CACHE_DIR', folder)
    assert kernel.cache_folder() is None  # set by the user (or above): left alone
