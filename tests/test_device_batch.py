"""Augmentation on the batch (``pt.patch_loader(device=...)``), proved on CPU against the per-patch path.

- deterministic steps give the per-patch path's patches: images within 1e-4 relative, labels
  equal except at exact rounding ties (counted, at most 1e-4 of the voxels);
- the parameters the batch receives follow TorchIO's distributions (the parameters
  themselves, against TorchIO's ``get_params``, with fixed seeds);
- the same seed gives the same batches whatever ``num_workers`` is;
- batches keep the geometry ``pt.to_native`` needs (per-sample affine and location).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio
from scipy import stats

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.patching.augment import augment_patch
from pyable_tio.patching.batch import BatchAugmenter
from pyable_tio.patching.boxes import box_sample
from pyable_tio.patching.ops.registry import op_for
from pyable_tio.patching.volume import Volume

SIZE_XYZ = (30, 26, 18)
SPACING_XYZ = (0.9, 1.2, 2.0)
PATCH = (8, 12, 10)  # D, H, W
STARTS = [(3, 5, 9), (0, 0, 0), (10, 14, 20), (5, 2, 1)]  # interior, corners (padding), an edge
LABELS = set(synthetic.LABEL_VALUES)


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp('device')
    direction = np.asarray(synthetic.oblique_direction(20.0, 'z')).reshape(3, 3) @ np.asarray(
        synthetic.oblique_direction(12.0, 'x')).reshape(3, 3)
    entries = {}
    for index in range(2):
        t1 = synthetic.phantom(SIZE_XYZ, SPACING_XYZ, (-10.0, 4.0, 7.0), tuple(direction.ravel()), seed=3 + index)
        sitk.WriteImage(t1, str(folder / f't1_{index}.nii.gz'))
        sitk.WriteImage(synthetic.label_map(t1), str(folder / f'labels_{index}.nii.gz'))
        entries[f'sub-{index}'] = {'images': [f't1_{index}.nii.gz'], 'labelmaps': [f'labels_{index}.nii.gz']}
    path = folder / 'manifest.json'
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope='module')
def subject(manifest, tmp_path_factory):
    return pt.subjects_from_manifest(manifest, cache_dir=tmp_path_factory.mktemp('cache'))[0]  # memory maps


def volumes_of(subject):
    return {name: Volume.of(image) for name, image in subject.get_images_dict(intensity_only=False).items()}


def both_paths(subject, transform, starts=STARTS):
    """The per-patch path's patches and the batch path's batch, for the same starts and seeds."""
    plan = pt.plan_transform(transform, device='cpu')
    volumes = volumes_of(subject)
    per_patch = [augment_patch(plan.patch_ops, subject, volumes, s, PATCH, torch.Generator().manual_seed(i))[0]
                 for i, s in enumerate(starts)]
    cpu_ops = plan.patch_ops[:len(plan.patch_ops) - len(plan.batch_steps)]
    samples = [box_sample(cpu_ops, plan.batch_ops, subject, volumes, s, PATCH, torch.Generator().manual_seed(i))
               for i, s in enumerate(starts)]
    return plan, per_patch, samples, BatchAugmenter(plan, 'cpu')(samples)


def rounding_ties(sample, name, voxels):
    """How many of ``voxels`` (patch indices) map exactly half-way between two source voxels."""
    matrix = sample.maps[name]
    coordinates = np.asarray(voxels, np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    return int(np.any(np.abs(coordinates - np.floor(coordinates) - 0.5) < 1e-6, axis=1).sum())


def assert_same_patches(per_patch, samples, batch):
    mismatched = ties = total = 0
    for i, (reference, sample) in enumerate(zip(per_patch, samples)):
        image, expected = batch['images'][tio.DATA][i], reference['images']
        assert image.dtype == torch.float32 and image.shape == expected.shape
        scale = float(expected.abs().max())
        np.testing.assert_allclose(image.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4 * scale)
        label, expected = batch['labelmap_0'][tio.DATA][i], reference['labelmap_0']
        assert label.dtype == expected.dtype == torch.uint8  # labels keep their dtype
        assert set(torch.unique(label).tolist()) <= LABELS  # never invented
        different = torch.nonzero(label[0] != expected[0]).numpy()
        mismatched += len(different)
        ties += rounding_ties(sample, 'labelmap_0', different)
        total += label.numel()
    assert ties == mismatched, f'{mismatched - ties} label voxels differ away from a rounding tie'
    assert mismatched <= 1e-4 * total, (mismatched, total)
    return mismatched


DETERMINISTIC = {
    'affine': tio.Affine(scales=(1.08, 0.93, 1.02), degrees=(7.3, -4.1, 11.7), translation=(1.5, -2.0, 0.7)),
    'affine-origin-minimum-pad': tio.Affine(scales=1.1, degrees=(0, 0, 30), translation=0, center='origin',
                                            default_pad_value='minimum'),
    'flip-gamma': tio.Compose([tio.Flip(axes=(0, 2)), tio.Gamma(0.7)]),
    'gamma-then-affine': tio.Compose([tio.Gamma(0.8), tio.Affine(scales=1.05, degrees=(3, 8, -6), translation=0,
                                                                 default_pad_value='otsu')]),  # gamma on the box
    'bias-field-then-affine-then-bias-field': tio.Compose([
        tio.BiasField(coefficients=[0.3, -0.2, 0.1, 0.25, 0.05, -0.15, 0.2, 0.1, -0.1, 0.05], order=2),
        tio.Affine(scales=1.0, degrees=(0, 0, 12), translation=0),
        tio.BiasField(coefficients=[0.1, 0.2, -0.3, 0.1], order=1)]),
    'chain': tio.Compose([tio.ZNormalization(), tio.Affine(scales=0.9, degrees=(5, 0, 20), translation=(1, 0, 0),
                                                           default_pad_value='mean'),
                          tio.RescaleIntensity((0, 1)), tio.Clamp(0.1, 0.9), tio.Gamma(1.3), tio.Flip(axes=(1,))]),
    'channel-normalization-then-affine': tio.Compose([
        pt.transforms.IntensityNormalization(), tio.Affine(scales=1.0, degrees=(0, 0, 9), translation=0)]),
}


@pytest.mark.parametrize('name', sorted(DETERMINISTIC))
def test_deterministic_steps_give_the_per_patch_patches(subject, name):
    plan, per_patch, samples, batch = both_paths(subject, DETERMINISTIC[name])
    assert plan.batch_steps == plan.patch_steps  # everything runs on the batch
    assert samples[0].boxes['labelmap_0'].dtype == torch.uint8  # workers send the stored dtype
    assert_same_patches(per_patch, samples, batch)


def test_half_voxel_scaling_ties_are_counted(subject):
    """A 0.5 scaling puts many coordinates exactly half-way: only there may labels differ."""
    transform = tio.Affine(scales=0.5, degrees=0, translation=0)
    _, per_patch, samples, batch = both_paths(subject, transform, STARTS * 8)
    assert_same_patches(per_patch, samples, batch)


def test_steps_that_stay_per_patch_run_first_in_the_workers(subject):
    """Elastic (and blur) run per patch in the workers; the batch takes the steps after the last resampling."""
    control_points = np.linspace(-1.5, 1.5, 375).reshape(5, 5, 5, 3)
    transform = tio.Compose([tio.ElasticDeformation(control_points=control_points, max_displacement=(2, 2, 2)),
                             tio.Gamma(0.8), tio.Flip(axes=(2,))])
    plan, per_patch, samples, batch = both_paths(subject, transform)
    assert [type(s).__name__ for s in plan.batch_steps] == ['Gamma', 'Flip']
    assert 'per patch   ElasticDeformation' in plan.table() and 'on batch    Gamma (cpu)' in plan.table()
    assert samples[0].boxes['images'].dtype == torch.float32  # the finished patch
    assert_same_patches(per_patch, samples, batch)
    blurred = pt.plan_transform(tio.Compose([tio.RandomAffine(), tio.RandomBlur(), tio.RandomGamma()]), device='cpu')
    assert [type(s).__name__ for s in blurred.batch_steps] == ['RandomGamma']


def test_intensity_ops_with_a_batch_form_run_on_the_batch():
    """An intensity op is batchable exactly when it has its own apply_batch (blur has none)."""
    batchable = {type(step).__name__: op_for(step).batchable() for step in (
        tio.RandomGamma(), tio.RandomNoise(), tio.Clamp(0, 1), tio.RandomBiasField(), tio.ZNormalization(),
        pt.transforms.IntensityNormalization(), tio.RescaleIntensity((0, 1)), tio.RandomBlur())}
    assert batchable == {'RandomGamma': True, 'RandomNoise': True, 'Clamp': True, 'RandomBiasField': True,
                         'ZNormalization': True, 'IntensityNormalization': True, 'RescaleIntensity': True,
                         'RandomBlur': False}


# ------------------------------------------------------------------------------- parameters


def _draw(subject, transform, count, seed=0):
    plan = pt.plan_transform(transform, device='cpu')
    volumes = volumes_of(subject)
    generator = torch.Generator().manual_seed(seed)
    return [box_sample((), plan.batch_ops, subject, volumes, (3, 5, 9), PATCH, generator) for _ in range(count)]


def test_batch_parameters_follow_torchio_distributions(subject):
    count = 400
    transform = tio.Compose([tio.RandomGamma(log_gamma=(-0.4, 0.3)), tio.RandomNoise(mean=(-1, 1), std=(0.5, 2))])
    samples = _draw(subject, transform, count)
    gammas = [s.params[0]['images']['per_image']['images'][0] for s in samples]
    noise = np.array([s.params[1]['images']['per_image']['images'] for s in samples])
    seeds = {s.params[1]['images']['seed'] for s in samples}
    torch.manual_seed(1)
    gamma_step, noise_step = tio.RandomGamma(log_gamma=(-0.4, 0.3)), tio.RandomNoise(mean=(-1, 1), std=(0.5, 2))
    torchio_gammas = [float(gamma_step.get_params(gamma_step.log_gamma_range)) for _ in range(count)]
    torchio_noise = np.array([noise_step.get_params(noise_step.mean_range, noise_step.std_range) for _ in range(count)])
    assert stats.ks_2samp(gammas, torchio_gammas).pvalue > 0.01
    assert stats.ks_2samp(noise[:, 0], torchio_noise[:, 0]).pvalue > 0.01
    assert stats.ks_2samp(noise[:, 1], torchio_noise[:, 1]).pvalue > 0.01
    assert len(seeds) == count  # one noise seed per patch


def test_noise_on_the_batch_has_the_drawn_mean_and_std(subject):
    samples = _draw(subject, tio.RandomNoise(mean=(-1, 1), std=(0.5, 2)), 6)
    op = op_for(tio.RandomNoise())
    params = [s.params[0]['images'] for s in samples]
    noisy = op.apply_batch(params, torch.zeros(6, 1, 16, 16, 16), 'images')
    for b, p in enumerate(params):
        mean, std = p['per_image']['images']
        assert abs(float(noisy[b].mean()) - mean) < 0.1 * std and abs(float(noisy[b].std()) / std - 1) < 0.05
    again = op.apply_batch(params, torch.zeros(6, 1, 16, 16, 16), 'images')
    assert torch.equal(noisy, again)  # the seed travels with the sample


def test_affine_and_flip_parameters_follow_torchio_distributions(subject):
    count = 600
    affine = op_for(tio.RandomAffine(scales=(0.8, 1.2), degrees=(-10, 20), translation=(-5, 5)))
    flip = op_for(tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.3))
    generator = torch.Generator().manual_seed(0)
    channels = {'images': 1, 'labelmap_0': 1}
    ours = [affine.draw(subject, channels, generator).params for _ in range(count)]
    hot = np.array([flip.draw(subject, channels, generator).params['hot'] for _ in range(count)])
    torch.manual_seed(2)
    step = affine.step
    theirs = [step.get_params(step.scales, step.degrees, step.translation, step.isotropic) for _ in range(count)]
    for key, column in (('scales', 0), ('degrees', 1), ('translation', 2)):
        for axis in range(3):
            ks = stats.ks_2samp([p[key][axis] for p in ours], [float(t[column][axis]) for t in theirs])
            assert ks.pvalue > 0.01, (key, axis, ks)
    for axis in range(3):
        assert stats.binomtest(int(hot[:, axis].sum()), count, 0.3).pvalue > 0.01


# ------------------------------------------------------------------------------- loader


RECIPE = tio.Compose([tio.RandomAffine(degrees=10, scales=0.1), tio.RandomFlip(axes=(0, 1, 2)), tio.RandomGamma(),
                      tio.RandomNoise(std=(0, 5))])


def _epoch(manifest, num_workers, device='cpu'):
    torch.manual_seed(7)
    loader = pt.patch_loader(manifest, patch_size=PATCH, samples_per_volume=3, batch_size=2, transform=RECIPE,
                             num_workers=num_workers, device=device, shuffle_patches=True)
    return list(loader)


def test_same_seed_same_batches_whatever_num_workers(manifest):
    runs = [_epoch(manifest, n) for n in (0, 1, 2)]
    assert len(runs[0]) == 3
    for batches in runs[1:]:
        assert len(batches) == len(runs[0])
        for ours, reference in zip(batches, runs[0]):
            assert torch.equal(ours[tio.LOCATION], reference[tio.LOCATION])
            for key in ('images', 'labelmap_0'):
                assert torch.equal(ours[key][tio.DATA], reference[key][tio.DATA])
    labels = torch.cat([b['labelmap_0'][tio.DATA] for b in runs[0]])
    assert labels.dtype == torch.uint8 and set(torch.unique(labels).tolist()) <= LABELS


def test_batches_keep_the_geometry_to_native_needs(manifest, tmp_path):
    """A label patch from the batch, sent to native space with its batch affine, lands on the label file."""
    torch.manual_seed(3)
    loader = pt.patch_loader(manifest, patch_size=PATCH, samples_per_volume=2, batch_size=4, device='cpu',
                             transform=tio.RandomGamma())
    assert 'on batch    RandomGamma (cpu)' in loader.plan.table()
    batch = next(iter(loader))
    subjects = {s['id']: s for s in pt.subjects_from_manifest(manifest)}
    for i, subject_id in enumerate(batch['id']):
        subject = subjects[subject_id]
        start = batch[tio.LOCATION][i, :3].numpy()
        affine = np.asarray(batch['labelmap_0'][tio.AFFINE][i])  # as tio.SubjectsLoader stacks it
        volume_affine = subject['labelmap_0'].affine
        np.testing.assert_allclose(affine[:3, 3], volume_affine[:3, :3] @ start + volume_affine[:3, 3], atol=1e-9)
        patch = batch['labelmap_0'][tio.DATA][i]
        native = pt.to_native(tio.LabelMap(tensor=patch, affine=affine), subject, target='labelmap_0',
                              default_value=255)
        original = sitk.GetArrayFromImage(sitk.ReadImage(str(subject['labelmap_0'].path)))
        ours = sitk.GetArrayFromImage(native)
        covered = ours != 255
        assert covered.sum() == patch.numel()  # the patch's voxels, once each
        assert np.array_equal(ours[covered], original[covered])


def test_device_none_is_the_per_patch_path_and_cuda_needs_a_gpu(manifest):
    loader = pt.patch_loader(manifest, patch_size=PATCH, samples_per_volume=2, batch_size=2, transform=RECIPE)
    assert isinstance(loader, tio.SubjectsLoader) and isinstance(loader.queue, pt.patching.queue.PatchQueue)
    assert next(iter(loader))['images'][tio.DATA].shape == (2, 1, *PATCH)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='no CUDA device'):
            pt.patch_loader(manifest, patch_size=PATCH, samples_per_volume=2, batch_size=2, device='cuda')
    with pytest.raises(ValueError, match='device must be'):
        pt.patch_loader(manifest, patch_size=PATCH, samples_per_volume=2, batch_size=2, device='gpu0')


def test_per_patch_queue_gives_the_same_shuffled_patches_whatever_num_workers(manifest):
    """Fixed with this loader: PatchQueue draws every subject's generator when the epoch starts, so
    the queue's patch shuffling reads the same global stream whatever the prefetch depth."""
    runs = []
    for num_workers in (0, 2):
        torch.manual_seed(11)
        queue = pt.queue_from_manifest(manifest, patch_size=PATCH, samples_per_volume=3, max_length=4,
                                       transform=RECIPE, num_workers=num_workers, shuffle_patches=True)
        runs.append([batch['images'][tio.DATA] for batch in tio.SubjectsLoader(queue, batch_size=2)])
    assert len(runs[0]) == len(runs[1]) == 3
    for ours, reference in zip(runs[1], runs[0]):
        assert torch.equal(ours, reference)


def test_random_steps_drawn_alike_give_the_same_batches_with_or_without_a_device(manifest):
    """Without noise (drawn per voxel), the same seed draws the same locations and parameters on
    both paths: device=None and device='cpu' give the same batches, end to end."""
    transform = tio.Compose([tio.RandomAffine(degrees=15, scales=0.15, translation=2), tio.RandomFlip(axes=(0, 1, 2)),
                             tio.RandomGamma(), tio.RandomBiasField(coefficients=0.3)])
    runs = {}
    for device in (None, 'cpu'):
        torch.manual_seed(5)
        runs[device] = list(pt.patch_loader(manifest, patch_size=PATCH, samples_per_volume=3, batch_size=3,
                                            transform=transform, num_workers=1, device=device))
    assert len(runs[None]) == len(runs['cpu']) == 2
    for ours, reference in zip(runs['cpu'], runs[None]):
        assert torch.equal(ours[tio.LOCATION], reference[tio.LOCATION])
        image, expected = ours['images'][tio.DATA], reference['images'][tio.DATA]
        np.testing.assert_allclose(image.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
        assert torch.equal(ours['labelmap_0'][tio.DATA], reference['labelmap_0'][tio.DATA])



def test_box_workers_check_that_the_patch_fits(subject):
    """The batch path's workers refuse a patch larger than the volume, as the per-patch path's do
    (behind the manifest's own check, for datasets built by hand)."""
    from pyable_tio.patching.boxes import SubjectBoxes
    from pyable_tio.patching.cutting import SubjectPatches

    too_large = (PATCH[0], PATCH[1], SIZE_XYZ[0] + 1)  # W is SimpleITK's x
    plan = pt.plan_transform(tio.RandomGamma(), device='cpu')
    for kind in (SubjectPatches, SubjectBoxes):
        patches = kind(tio.SubjectsDataset([subject]), tio.UniformSampler(too_large), 1, plan)
        with pytest.raises(RuntimeError, match="subject 'sub-0': Patch size .* cannot be larger than image size"):
            patches.patches(0, torch.Generator().manual_seed(0))
