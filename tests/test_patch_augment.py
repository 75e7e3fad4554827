"""Per-patch augmentation equals the whole-volume TorchIO step (about the same centre), then cropped.

The subject is oblique (rotated about two axes) and anisotropic, with an image and a label map.
Images are compared with a float tolerance, labels exactly (values and dtype).
"""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.constants import PATCH_ENGINE_DEFAULT, PATCH_ENGINES
from pyable_tio.patching.augment import augment_patch
from pyable_tio.patching import split
from pyable_tio.patching.cutting import SubjectPatches
from pyable_tio.patching.ops.intensity import ZNormalizationOp
from pyable_tio.patching.volume import Volume

SIZE_XYZ = (30, 26, 18)
SPACING_XYZ = (0.9, 1.2, 2.0)
PATCH = (8, 12, 10)  # D, H, W
LABELS = set(synthetic.LABEL_VALUES)
ENGINE = PATCH_ENGINE_DEFAULT


@pytest.fixture(scope='module')
def oblique_manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp('oblique')
    direction = np.asarray(synthetic.oblique_direction(20.0, 'z')).reshape(3, 3) @ np.asarray(
        synthetic.oblique_direction(12.0, 'x')).reshape(3, 3)
    t1 = synthetic.phantom(SIZE_XYZ, SPACING_XYZ, (-10.0, 4.0, 7.0), tuple(direction.ravel()), seed=3)
    labels = synthetic.label_map(t1)
    sitk.WriteImage(t1, str(folder / 't1.nii.gz'))
    sitk.WriteImage(labels, str(folder / 'labels.nii.gz'))
    manifest = folder / 'manifest.json'
    manifest.write_text(json.dumps({'sub-00': {'images': ['t1.nii.gz'], 'labelmaps': ['labels.nii.gz']}}))
    return manifest


@pytest.fixture(autouse=True, params=PATCH_ENGINES)
def engine(request):
    """Every test runs on both engines: the numba kernels and SimpleITK (the oracle)."""
    global ENGINE
    ENGINE = request.param
    yield request.param
    ENGINE = PATCH_ENGINE_DEFAULT


@pytest.fixture()
def subject(oblique_manifest):
    return pt.subjects_from_manifest(oblique_manifest)[0]


def per_patch(subject, transform, start, seed=0):
    plan = pt.plan_transform(transform)
    assert plan.per_patch, plan.table()
    volumes = {name: Volume.of(image) for name, image in subject.get_images_dict(intensity_only=False).items()}
    tensors, _ = augment_patch(plan.patch_ops, subject, volumes, start, PATCH, torch.Generator().manual_seed(seed),
                               engine=ENGINE)
    return tensors


def whole(subject, transform, centre_start=None):
    """``transform`` on the loaded subject; with ``centre_start``, world coordinates shifted so that the
    patch centre at that start is the origin (so ``center='origin'`` rotates about the patch centre)."""
    loaded = copy.deepcopy(subject)
    loaded.load()
    if centre_start is not None:
        image = loaded['images']
        centre = image.affine[:3, :3] @ (np.asarray(centre_start) + (np.asarray(PATCH) - 1) / 2) + image.affine[:3, 3]
        for item in loaded.get_images(intensity_only=False):
            affine = item.affine.copy()
            affine[:3, 3] -= centre
            item.affine = affine
    return transform(loaded)


def crop(tensor, start):
    return tensor[(slice(None), *(slice(a, a + n) for a, n in zip(start, PATCH)))]


def assert_same(ours, theirs, start, labels_exact=True):
    image, label = ours['images'], ours['labelmap_0']
    np.testing.assert_allclose(image.numpy(), crop(theirs['images'].data, start).numpy(), rtol=1e-4, atol=1e-3)
    assert label.dtype == torch.uint8  # labels keep their dtype (TorchIO's Affine returns float32)
    expected = crop(theirs['labelmap_0'].data, start)
    if labels_exact:
        assert torch.equal(label.to(expected.dtype), expected)
    assert set(torch.unique(label).tolist()) <= LABELS


@pytest.mark.parametrize('start', [(3, 5, 9), (0, 0, 0), (10, 14, 20)])  # interior, two corners (padding)
def test_affine_about_the_patch_centre(subject, start):
    params = dict(scales=(1.08, 0.93, 1.02), degrees=(7.3, -4.1, 11.7), translation=(1.5, -2.0, 0.7))
    ours = per_patch(subject, tio.Affine(**params), start)
    theirs = whole(subject, tio.Affine(**params, center='origin'), centre_start=start)
    assert_same(ours, theirs, start)


def test_random_affine_with_degenerate_ranges_and_numeric_pad(subject):
    start = (0, 14, 0)
    random = tio.RandomAffine(scales=(1.1, 1.1), degrees=(9, 9), translation=(2, 2), default_pad_value=-50.0)
    fixed = tio.Affine(scales=(1.1,) * 3, degrees=(9,) * 3, translation=(2,) * 3, center='origin', default_pad_value=-50.0)
    ours = per_patch(subject, random, start)
    theirs = whole(subject, fixed, centre_start=start)
    assert_same(ours, theirs, start)
    padded = crop(theirs['images'].data, start) == -50.0
    assert padded.any() and torch.equal(ours['images'] == -50.0, padded)  # padding exactly where no data


def test_flips_reflect_about_the_patch_centre(subject):
    """The flipped patch is the patch at the mirrored location of the whole flipped volume."""
    start = (2, 3, 4)
    for axes in [('LR',), (0, 2), (1,)]:
        ours = per_patch(subject, tio.Flip(axes=axes), start)
        theirs = whole(subject, tio.Flip(axes=axes))
        shape = theirs['images'].spatial_shape
        image = theirs['images']
        flipped = {3 + image.axis_name_to_index(a) if isinstance(a, str) else a for a in axes}
        mirrored = tuple(n - s - p if a in flipped else s for a, (n, s, p) in enumerate(zip(shape, start, PATCH)))
        assert_same(ours, theirs, mirrored)


def test_affine_then_flip_is_one_resampling_equal_to_both_steps(subject):
    start = (4, 6, 5)
    affine = dict(scales=(0.95, 1.05, 1.0), degrees=(-6.0, 3.0, 8.5), translation=(0.0, 1.0, -1.0))
    ours = per_patch(subject, tio.Compose([tio.Affine(**affine), tio.Flip(axes=(2,))]), start)
    theirs = whole(subject, tio.Compose([tio.Affine(**affine, center='origin'), tio.Flip(axes=(2,))]), centre_start=start)
    shape = theirs['images'].spatial_shape
    mirrored = (start[0], start[1], shape[2] - start[2] - PATCH[2])
    assert_same(ours, theirs, mirrored)


def test_flips_after_intensity_steps_reverse_the_finished_patch(subject):
    """Mirroring last (as nnU-Net does): [Affine, Gamma, Blur, Flip] equals the whole-volume steps
    at the mirrored location, and [Flip, Gamma, Flip] too (no resampling at all)."""
    start = (3, 4, 5)
    affine = dict(scales=(1.04, 0.97, 1.0), degrees=(4.0, -6.0, 9.0), translation=(1.0, 0.0, -0.5))
    intensity = [tio.Gamma(0.8), tio.Blur(std=(1.0, 1.5, 1.0))]
    ours = per_patch(subject, tio.Compose([tio.Affine(**affine), *intensity, tio.Flip(axes=(0, 2))]), start)
    theirs = whole(subject, tio.Compose([tio.Affine(**affine, center='origin'), *intensity, tio.Flip(axes=(0, 2))]),
                   centre_start=start)
    shape = theirs['images'].spatial_shape
    assert_same(ours, theirs, (shape[0] - start[0] - PATCH[0], start[1], shape[2] - start[2] - PATCH[2]))
    ours = per_patch(subject, tio.Compose([tio.Flip(axes=(1,)), tio.Gamma(0.8), tio.Flip(axes=('LR',))]), start)
    theirs = whole(subject, tio.Compose([tio.Flip(axes=(1,)), tio.Gamma(0.8), tio.Flip(axes=('LR',))]))
    image = theirs['images']
    flipped = {1} ^ {3 + image.axis_name_to_index('LR')}
    mirrored = tuple(n - s - p if a in flipped else s for a, (n, s, p) in enumerate(zip(shape, start, PATCH)))
    assert_same(ours, theirs, mirrored)


def test_pyable_tio_flip_and_intensity_normalization_run_per_patch(subject):
    """The package's own RandomFlip (D, H, W axes) and per-channel IntensityNormalization (whole-volume
    statistics, optionally inside a mask) equal the whole-volume steps, then cropped."""
    start = (3, 4, 5)
    flip = pt.transforms.RandomFlip(axes=('D', 'W'), p_axis=1.0)
    ours = per_patch(subject, flip, start)
    theirs = whole(subject, flip)
    shape = theirs['images'].spatial_shape
    assert_same(ours, theirs, (shape[0] - start[0] - PATCH[0], start[1], shape[2] - start[2] - PATCH[2]))
    for mask in (None, 'labelmap_0'):
        normalize = pt.transforms.IntensityNormalization(mask=mask)
        ours = per_patch(subject, normalize, start)
        assert_same(ours, whole(subject, normalize), start)
        assert abs(float(ours['images'].mean())) > 0.05  # not the patch's own statistics
    plan = pt.plan_transform(tio.Compose([tio.RandomAffine(), pt.transforms.RandomFlip(),
                                          pt.transforms.IntensityNormalization(mask='roi_0')]))
    assert plan.per_patch, plan.table()
    with pytest.raises(ValueError, match='mask "roi_9" is not a subject key'):
        per_patch(subject, pt.transforms.IntensityNormalization(mask='roi_9'), start)


def test_a_bias_field_after_a_late_flip_runs_on_the_volume():
    """A field in volume coordinates sees the flip, which per patch comes last: refused, with the reason."""
    plan = pt.plan_transform(tio.Compose([tio.RandomAffine(), tio.RandomGamma(), tio.RandomFlip(),
                                          tio.RandomBiasField()]))
    assert not plan.per_patch and 'RandomBiasField follows RandomFlip' in plan.reason
    assert pt.plan_transform(tio.Compose([tio.RandomAffine(), tio.RandomFlip(), tio.RandomBiasField()])).per_patch
    late = pt.plan_transform(tio.Compose([tio.RandomAffine(), tio.RandomNoise(), tio.RandomAffine()]))
    assert 'RandomNoise sits between spatial steps' in late.reason


def test_elastic_control_points_span_the_whole_volume(subject):
    """Fixed control points: the per-patch field is the whole volume's field (same B-spline domain)."""
    rng = np.random.default_rng(0)
    control_points = rng.uniform(-3, 3, (7, 7, 7, 3))
    control_points[:2] = control_points[-2:] = 0
    elastic = tio.ElasticDeformation(control_points=control_points, max_displacement=(3.0, 3.0, 3.0))
    for start in [(3, 5, 9), (0, 0, 0)]:
        ours = per_patch(subject, elastic, start)
        theirs = whole(subject, elastic)
        assert_same(ours, theirs, start)


def test_intensity_steps_with_fixed_parameters(subject):
    start = (3, 4, 5)
    order2 = [0.3, -0.2, 0.1, 0.25, -0.15, 0.05, 0.2, -0.1, 0.12, 0.08]
    transforms = [
        tio.Gamma(0.8),
        tio.Clamp(10, 60),
        tio.RescaleIntensity(out_min_max=(-1, 1), percentiles=(2, 98)),
        tio.RescaleIntensity(out_min_max=(0, 1), in_min_max=(0, 50)),
        tio.ZNormalization(),
        tio.ZNormalization(masking_method='labelmap_0'),
        tio.Blur(std=(1.0, 2.0, 1.5)),
        tio.BiasField(coefficients=order2, order=2),
        # blur before and after a rotation: kernels need a margin on both sides of the resampling
        tio.Compose([tio.Blur(std=(1.0, 1.0, 2.0)), tio.Affine(1.0, (5.0, -3.0, 4.0), 0), tio.Blur(std=(1.5, 1.0, 1.0))]),
    ]
    for transform in transforms:
        ours = per_patch(subject, transform, start)
        rotating = isinstance(transform, tio.Compose)
        theirs = whole(subject, tio.Compose([
            step if not isinstance(step, tio.Affine) else tio.Affine(1.0, (5.0, -3.0, 4.0), 0, center='origin')
            for step in transform]) if rotating else transform, centre_start=start if rotating else None)
        assert_same(ours, theirs, start)


def test_statistics_are_the_whole_volume_never_the_patch(subject):
    ours = per_patch(subject, tio.ZNormalization(), (0, 0, 0))['images']
    loaded = copy.deepcopy(subject)
    loaded.load()
    data = loaded['images'].data
    expected = (crop(data, (0, 0, 0)) - data.mean()) / data.std()
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert abs(float(ours.mean())) > 0.05  # a patch normalised by its own statistics would have mean 0


def test_noise_and_gamma_are_drawn_from_the_subject_generator(subject):
    start = (3, 4, 5)
    plain = per_patch(subject, tio.Clamp(-1e9, 1e9), start)['images']
    noisy = per_patch(subject, tio.RandomNoise(std=(0.5, 0.5)), start)['images']
    assert abs(float((noisy - plain).std()) - 0.5) < 0.05
    again = per_patch(subject, tio.RandomNoise(std=(0.5, 0.5)), start)['images']
    other = per_patch(subject, tio.RandomNoise(std=(0.5, 0.5)), start, seed=1)['images']
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)


def test_only_the_patch_box_is_read(subject, monkeypatch):
    boxes = []
    for method in ('crop', 'box'):  # every way a region is read
        def spy(self, start, stop, original=getattr(Volume, method)):
            boxes.append(np.subtract(stop, start))
            return original(self, start, stop)

        monkeypatch.setattr(Volume, method, spy)
    per_patch(subject, tio.Compose([tio.RandomAffine(degrees=10, scales=0.1), tio.RandomFlip(), tio.RandomGamma()]),
              (4, 6, 8))
    shape = np.asarray(SIZE_XYZ[::-1])
    assert boxes and all(np.prod(box) < 0.6 * np.prod(shape) for box in boxes)


RECIPE = [tio.RandomAffine(degrees=10, scales=0.1), tio.RandomElasticDeformation(num_control_points=5, max_displacement=2.0),
          tio.RandomFlip(axes=('LR',)), tio.RandomGamma(), tio.RandomNoise(std=0.1)]


def _epoch(manifest, num_workers):
    torch.manual_seed(7)
    queue = pt.queue_from_manifest(manifest, patch_size=PATCH, samples_per_volume=3, max_length=6,
                                   transform=tio.Compose(RECIPE), num_workers=num_workers, shuffle_patches=False,
                                   engine=ENGINE)
    assert isinstance(queue, pt.patching.queue.PatchQueue) and queue.threads and queue.engine == ENGINE
    return [batch for batch in tio.SubjectsLoader(queue, batch_size=3)]


def test_same_seed_same_patches_whatever_num_workers(oblique_manifest):
    runs = [_epoch(oblique_manifest, n) for n in (0, 1, 2)]
    for batches in runs[1:]:
        assert len(batches) == len(runs[0])
        for ours, reference in zip(batches, runs[0]):
            for key in ('images', 'labelmap_0'):
                assert torch.equal(ours[key][tio.DATA], reference[key][tio.DATA])
    labels = torch.cat([b['labelmap_0'][tio.DATA] for b in runs[0]])
    assert labels.dtype == torch.uint8 and set(torch.unique(labels).tolist()) <= LABELS  # never invented
    assert runs[0][0]['images'][tio.DATA].shape == (3, 1, *PATCH)


def test_plan_transform_splits_and_logs_the_fallback_once(oblique_manifest, caplog):
    plan = pt.plan_transform(tio.Compose([tio.RandomAffine(), tio.RandomFlip(), tio.RandomGamma()]))
    assert plan.per_patch and not plan.volume_steps and plan.reason is None
    assert pt.plan_transform(tio.Compose([tio.RandomAffine(), tio.RandomNoise(), tio.RandomFlip()])).per_patch
    mixed = pt.plan_transform(tio.Compose([tio.ToCanonical(), tio.RandomMotion(), tio.RandomAffine(), tio.ZNormalization()]))
    assert [type(s).__name__ for s in mixed.volume_steps] == ['ToCanonical', 'RandomMotion']
    assert [type(s).__name__ for s in mixed.patch_steps] == ['RandomAffine', 'ZNormalization']
    assert 'RandomMotion' in mixed.reason and 'per volume  RandomMotion' in mixed.table()
    # statistics after a value-changing step would be those of a changed volume: that step goes whole
    late = pt.plan_transform(tio.Compose([tio.RandomGamma(), tio.ZNormalization()]))
    assert [type(s).__name__ for s in late.volume_steps] == ['RandomGamma']
    assert pt.plan_transform(lambda subject: subject).patch_steps == ()
    transform = tio.Compose([tio.RandomSpike(), tio.RandomFlip()])
    split._logged.clear()  # once per process: this test runs once per engine
    with caplog.at_level(logging.WARNING, logger='pyable_tio'):
        for _ in range(2):
            pt.queue_from_manifest(oblique_manifest, patch_size=PATCH, samples_per_volume=1, max_length=2,
                                   transform=transform)
    messages = [r.getMessage() for r in caplog.records if 'RandomSpike' in r.getMessage()]
    assert len(messages) == 1


def test_2d_subjects_run_spatial_steps_on_the_whole_slice(tmp_path):
    """2-D grids keep the whole-volume path for spatial steps (their in-plane conventions apply)."""
    image = synthetic.phantom(size=(24, 20), spacing=(1.0, 1.2), seed=1)
    sitk.WriteImage(image, str(tmp_path / 'slice.nii.gz'))
    subjects = pt.subjects_from_manifest({'s0': {'images': [str(tmp_path / 'slice.nii.gz')]}})
    flip = tio.Flip(axes=(1,))
    patches = SubjectPatches(tio.SubjectsDataset(subjects, transform=flip), tio.UniformSampler((1, 6, 8)), 3)
    assert patches.plan.per_patch and patches.reads_lazily()
    flipped = whole(subjects[0], flip)['images'].data
    for patch in patches.patches(0, torch.Generator().manual_seed(0)):
        d0, h0, w0 = (int(v) for v in patch[tio.LOCATION][:3])
        assert torch.equal(patch['images'].data, flipped[:, d0:d0 + 1, h0:h0 + 6, w0:w0 + 8])


def test_reset_queue_replays_augmented_patches(oblique_manifest):
    from pyable_tio.transforms import reset_queue, seed_everything

    seed_everything(3)
    queue = pt.queue_from_manifest(oblique_manifest, patch_size=PATCH, samples_per_volume=2, max_length=4,
                                   transform=tio.Compose(RECIPE), num_workers=2, engine=ENGINE)
    first = [b['images'][tio.DATA] for b in tio.SubjectsLoader(queue, batch_size=2)]
    reset_queue(queue, 3)
    again = [b['images'][tio.DATA] for b in tio.SubjectsLoader(queue, batch_size=2)]
    assert len(first) == len(again) and all(torch.equal(a, b) for a, b in zip(first, again))


def test_whole_volume_prefix_then_statistics_per_patch(oblique_manifest):
    """RandomMotion runs on the loaded volume; ZNormalization per patch uses that volume's statistics."""
    transform = tio.Compose([tio.RandomMotion(degrees=2, translation=2, num_transforms=1), tio.ZNormalization()])
    queue = pt.queue_from_manifest(oblique_manifest, patch_size=PATCH, samples_per_volume=4, max_length=4,
                                   transform=transform, num_workers=0, fast_patches=True)
    assert type(pt.queue_from_manifest(oblique_manifest, patch_size=PATCH, samples_per_volume=1, max_length=1,
                                       transform=transform)) is tio.Queue  # the default keeps tio.Queue
    assert isinstance(queue, pt.patching.queue.PatchQueue) and not queue.threads
    patches = queue._patches.patches(0)
    assert [name for name, _ in patches[0].applied_transforms] == ['Motion', 'ZNormalization', 'Crop']
    means = [float(p['images'].data.mean()) for p in patches]
    assert all(np.isfinite(means)) and max(abs(m) for m in means) > 0.05  # a patch's own statistics: mean 0


def test_whole_volume_statistics_are_kept_in_the_volume_cache(oblique_manifest, tmp_path, monkeypatch):
    from pyable_tio.patching import stats as volume_stats

    cache = pt.VolumeCache(tmp_path / 'cache')
    cached = pt.subjects_from_manifest(oblique_manifest, cache_dir=cache)[0]
    start, steps = (2, 3, 4), tio.ZNormalization()
    volume_stats._memo.clear()
    first = per_patch(cached, steps, start)['images']
    before = {key for key, _, _ in cache.entries()}
    statistics = [key for key in before if cache.get(key).ndim == 1]
    assert len(before) == 3 and len(statistics) == 1  # image, label map, and the image's statistics
    assert set(json.loads(cache.get(statistics[0]).tobytes())) == {'mean', 'std'}

    # A later run (empty process memo) reads the statistics from the cache, not the volume.
    volume_stats._memo.clear()
    monkeypatch.setattr(ZNormalizationOp, 'statistics', lambda *a: pytest.fail('recomputed'))
    again = per_patch(pt.subjects_from_manifest(oblique_manifest, cache_dir=cache)[0], steps, start)['images']
    assert torch.equal(first, again)
    monkeypatch.undo()

    # Another statistic (other percentiles) is another entry; the first stays exact and uncached equal.
    volume_stats._memo.clear()
    per_patch(cached, tio.RescaleIntensity(percentiles=(2, 98)), start)
    assert len({key for key, _, _ in cache.entries()} - before) == 1
    volume_stats._memo.clear()
    uncached = per_patch(pt.subjects_from_manifest(oblique_manifest)[0], steps, start)['images']
    torch.testing.assert_close(first, uncached, rtol=0, atol=0)
    assert cache.check(statistics[0]) is None  # the statistics entry passes the cache's own check
