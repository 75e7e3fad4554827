"""Every TorchIO transform a user would reuse, on our Z,Y,X subject and on TorchIO's native one.

The native subject is read from the same files by TorchIO's own reader (I,J,K = x,y,z). Each
transform runs on both with the same random parameters (same torch seed, or the deterministic
counterpart with the index-axis parameters permuted where TorchIO defines them per tensor
axis); the results are then compared in physical space with SimpleITK (nearest-neighbour
resampling of one onto the other's grid, exact when the grids coincide) and label maps must
keep label values. A transform that became physically wrong on our layout fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.transforms import ToZYX, is_zyx

LABELS = set(synthetic.LABEL_VALUES)
SIZE = (14, 12, 10)  # x, y, z: our tensors are 1 x 10 x 12 x 14
SPACING = (1.0, 1.3, 1.7)
ORIGIN = (5.0, -3.0, 2.0)


def oblique() -> tuple[float, ...]:
    rz = np.asarray(synthetic.oblique_direction(20, 'z')).reshape(3, 3)
    rx = np.asarray(synthetic.oblique_direction(10, 'x')).reshape(3, 3)
    return tuple((rz @ rx).ravel())


#: Reference grid directions: oblique (index axes near x, y, z) and sagittal (index x, y, z along
#: world y, z, x, so that TorchIO's index axes are not the world axes either).
DIRECTIONS = {'oblique': oblique(), 'sagittal': (0, 0, 1, 1, 0, 0, 0, 1, 0)}


@pytest.fixture(scope='module', params=list(DIRECTIONS))
def files(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp('equivalence')
    image = synthetic.phantom(SIZE, SPACING, ORIGIN, DIRECTIONS[request.param])
    labels = synthetic.label_map(image)
    other = synthetic.phantom((9, 11, 8), (1.6, 1.4, 2.1), (4.0, -1.0, 3.0), synthetic.oblique_direction(35, 'y'))
    paths = {name: folder / f'{name}.nii.gz' for name in ('t1', 'labels', 'other')}
    for name, img in zip(paths, (image, labels, other)):
        sitk.WriteImage(img, str(paths[name]))
    return paths


@pytest.fixture
def ours(files) -> tio.Subject:
    manifest = {'s0': {'images': [str(files['t1'])], 'labelmaps': [str(files['labels'])]}}
    subject = pt.subjects_from_manifest(manifest)[0]
    subject.load()
    return subject


@pytest.fixture
def native(files) -> tio.Subject:
    return tio.Subject(images=tio.ScalarImage(files['t1']), labelmap_0=tio.LabelMap(files['labels']))


def test_the_two_layouts_hold_the_same_voxels(ours, native):
    for key in ('images', 'labelmap_0'):
        assert ours[key].data.shape[1:] == SIZE[::-1]
        assert native[key].data.shape[1:] == SIZE
        assert np.allclose(ours[key].affine[:, [2, 1, 0, 3]], native[key].affine)
        assert torch.equal(ours[key].data.permute(0, 3, 2, 1), native[key].data.to(ours[key].data.dtype))
    assert_physically_equal(ours, native)


def on_grid_of(image: tio.Image, grid: tio.Image, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` resampled (nearest) onto ``grid``'s voxels, and ``grid``'s own values, as x,y,z arrays."""
    moving = tio.ScalarImage(tensor=image.data[channel : channel + 1].float(), affine=image.affine).as_sitk()
    fixed = tio.ScalarImage(tensor=grid.data[channel : channel + 1].float(), affine=grid.affine).as_sitk()
    resampled = sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, np.nan, sitk.sitkFloat64)
    return sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(fixed).astype(np.float64)


def assert_physically_equal(a: tio.Subject, b: tio.Subject, rtol: float = 1e-4) -> None:
    """Same images at the same RAS points (any axis order), labels exactly equal and label-valued."""
    for key, image in b.get_images_dict(intensity_only=False).items():
        other = a[key]
        assert other.data.numel() == image.data.numel(), key
        assert other.data.shape[0] == image.data.shape[0], key
        for channel in range(image.data.shape[0]):
            moved, expected = on_grid_of(other, image, channel)
            assert not np.isnan(moved).any(), f'{key}: grids do not cover the same points'
            if isinstance(image, tio.LabelMap):
                np.testing.assert_array_equal(moved, expected, err_msg=key)
            else:
                scale = max(1.0, float(np.abs(expected).max()))
                np.testing.assert_allclose(moved, expected, rtol=rtol, atol=rtol * scale, err_msg=key)
    for subject in (a, b):
        labels = subject['labelmap_0'].data
        if labels.shape[0] == 1:  # not one-hot
            assert set(torch.unique(labels).tolist()) <= LABELS | {0}


def run(transform_ours, transform_native, ours, native, seed=0):
    torch.manual_seed(seed)
    out_ours = transform_ours(ours)
    torch.manual_seed(seed)
    out_native = transform_native(native)
    return out_ours, out_native


def both(transform):
    return transform, transform


def swap_axes(triplet):
    """(a0, a1, a2) per tensor axis of one layout -> the other layout (D,H,W <-> I,J,K)."""
    return tuple(triplet)[::-1]


def swap_bounds(bounds):
    """(ini0, fin0, ini1, fin1, ini2, fin2) per tensor axis -> the other layout."""
    pairs = [bounds[i : i + 2] for i in (0, 2, 4)]
    return tuple(v for pair in pairs[::-1] for v in pair)


def bias_coefficient_order(order: int) -> list[tuple[int, int, int]]:
    """Powers (axis 0, axis 1, axis 2) of each coefficient, in TorchIO's loop order."""
    return [
        (i, j, k)
        for i in range(order + 1)
        for j in range(order + 1 - i)
        for k in range(order + 1 - i - j)
    ]


def swap_bias_coefficients(coefficients, order):
    powers = bias_coefficient_order(order)
    index = {p: n for n, p in enumerate(powers)}
    return [coefficients[index[p[::-1]]] for p in powers]


# name -> (transform on ours, transform on native): physically equivalent with these parameters.
EQUIVALENT = {
    'Resample spacing (iso)': both(tio.Resample(1.9)),
    'Resample spacing (per axis)': (tio.Resample((1.9, 1.45, 1.15)), tio.Resample(swap_axes((1.9, 1.45, 1.15)))),
    'RandomAffine (seeded)': both(tio.RandomAffine(scales=0.2, degrees=25, translation=3)),
    'RandomElasticDeformation (seeded)': both(
        tio.RandomElasticDeformation(num_control_points=(5, 6, 7), max_displacement=(2, 1.5, 1), locked_borders=0)
    ),
    'RandomElasticDeformation (locked borders)': both(
        tio.RandomElasticDeformation(num_control_points=6, max_displacement=1.5)
    ),
    'Affine (fixed)': both(tio.Affine(scales=(1.1, 0.9, 1.2), degrees=(10, -20, 30), translation=(2, -1, 3))),
    'RandomFlip (anatomical)': both(tio.RandomFlip(axes=('LR', 'AP'), flip_probability=1)),
    'RandomFlip (index)': (
        tio.RandomFlip(axes=(0,), flip_probability=1), tio.RandomFlip(axes=(2,), flip_probability=1)
    ),
    'Crop': (tio.Crop((1, 2, 0, 1, 2, 3)), tio.Crop(swap_bounds((1, 2, 0, 1, 2, 3)))),
    'Pad': (tio.Pad((1, 2, 0, 1, 2, 3)), tio.Pad(swap_bounds((1, 2, 0, 1, 2, 3)))),
    'CropOrPad': (tio.CropOrPad((8, 15, 11)), tio.CropOrPad(swap_axes((8, 15, 11)))),
    'EnsureShapeMultiple': (tio.EnsureShapeMultiple((4, 5, 3)), tio.EnsureShapeMultiple(swap_axes((4, 5, 3)))),
    'Resize': (tio.Resize((6, 8, 10)), tio.Resize(swap_axes((6, 8, 10)))),
    'RandomAnisotropy (index axis)': (
        tio.RandomAnisotropy(axes=(0,), downsampling=(1.5, 3)),
        tio.RandomAnisotropy(axes=(2,), downsampling=(1.5, 3)),
    ),
    'ZNormalization': both(tio.ZNormalization()),
    'ZNormalization (masked)': both(tio.ZNormalization(masking_method='labelmap_0')),
    'RescaleIntensity': both(tio.RescaleIntensity((-1, 1), percentiles=(1, 99))),
    'BiasField (RandomBiasField params)': (
        tio.BiasField([0.1, -0.2, 0.3, 0.05, 0.15, -0.1, 0.2, -0.05, 0.1, 0.02], order=2),
        tio.BiasField(swap_bias_coefficients([0.1, -0.2, 0.3, 0.05, 0.15, -0.1, 0.2, -0.05, 0.1, 0.02], 2), order=2),
    ),
    'RandomGamma (seeded)': both(tio.RandomGamma(log_gamma=0.3)),
    'Ghosting (RandomGhosting params)': (
        tio.Ghosting(num_ghosts=3, axis=0, intensity=0.6, restore=0.05),
        tio.Ghosting(num_ghosts=3, axis=2, intensity=0.6, restore=0.05),
    ),
    'RandomGhosting (index axis, seeded)': (
        tio.RandomGhosting(num_ghosts=(2, 5), axes=(0,), intensity=(0.5, 0.9)),
        tio.RandomGhosting(num_ghosts=(2, 5), axes=(2,), intensity=(0.5, 0.9)),
    ),
    'Spike (RandomSpike params)': (
        tio.Spike(np.array([[0.2, 0.7, 0.4], [0.9, 0.1, 0.55]]), intensity=0.4),
        tio.Spike(np.array([[0.2, 0.7, 0.4], [0.9, 0.1, 0.55]])[:, ::-1].copy(), intensity=0.4),
    ),
    'Swap (RandomSwap params)': (
        tio.Swap((2, 3, 4), [((0, 1, 2), (5, 6, 8)), ((3, 0, 0), (7, 8, 9))]),
        tio.Swap(swap_axes((2, 3, 4)), [((2, 1, 0), (8, 6, 5)), ((0, 0, 3), (9, 8, 7))]),
    ),
    'RemapLabels': both(tio.RemapLabels({1: 7, 7: 1, 2: 0})),
    'OneHot': both(tio.OneHot()),
    'ToCanonical': both(tio.ToCanonical()),
    'ToOrientation': both(tio.ToOrientation('PIL')),
    'Transpose': both(tio.Transpose()),
}


@pytest.mark.parametrize('name', list(EQUIVALENT))
def test_transform_is_physically_equivalent(name, ours, native):
    transform_ours, transform_native = EQUIVALENT[name]
    out_ours, out_native = run(transform_ours, transform_native, ours, native)
    assert_physically_equal(out_ours, out_native)
    # The guard puts ours back in Z,Y,X without changing a voxel.
    guarded = ToZYX()(out_ours)
    assert is_zyx(guarded)
    assert_physically_equal(guarded, out_native)


def test_resample_onto_a_reference_image(ours, native, files):
    """Onto a file: TorchIO reads the target itself, so both come out in the target's I,J,K."""
    target = tio.ScalarImage(files['other'])
    out_ours, out_native = run(*both(tio.Resample(files['other'])), ours, native)
    assert np.allclose(out_ours['images'].affine, target.affine)
    assert_physically_equal(out_ours, out_native)
    with pytest.raises(pt.transforms.LayoutError, match='not a permutation of the Z,Y,X axes'):
        ToZYX()(out_ours)
    # Onto a (shape, affine) grid given in our layout: the output stays Z,Y,X.
    grid = (tuple(out_ours['images'].data.shape[1:][::-1]), target.affine[:, [2, 1, 0, 3]])
    native_grid = (tuple(out_ours['images'].data.shape[1:]), target.affine)
    out_ours, out_native = run(tio.Resample(grid), tio.Resample(native_grid), ours, native)
    assert_physically_equal(out_ours, out_native)


def test_elastic_control_grid_follows_world_axes(ours, native):
    """ITK lays the control grid along the world axes closest to the image's, whatever the tensor order."""
    grids = []
    for subject in (ours, native):
        image = subject['images'].as_sitk()
        grid = sitk.BSplineTransformInitializer(image, [2, 3, 4]).GetCoefficientImages()[0]
        grids.append((grid.GetSize(), np.round(grid.GetDirection(), 6), np.round(grid.GetOrigin(), 6)))
    assert grids[0][0] == grids[1][0] == (5, 6, 7)
    np.testing.assert_allclose(grids[0][1], grids[1][1])
    np.testing.assert_allclose(grids[0][2], grids[1][2])


def test_random_noise_follows_memory_order(ours, native):
    """i.i.d. noise: the same draws in memory order, so equal in distribution, not voxel-wise."""
    out_ours, out_native = run(*both(tio.RandomNoise(std=(2, 3))), ours, native)
    noise_ours = out_ours['images'].data - ours['images'].data
    noise_native = out_native['images'].data - native['images'].data.float()
    torch.testing.assert_close(noise_ours.flatten(), noise_native.flatten())
    assert torch.equal(out_ours['labelmap_0'].data, ours['labelmap_0'].data)


def test_random_motion_k_space_follows_the_last_tensor_axis(ours, native):
    """Rigid motions are physical; k-space segments run along the last axis (W = x here, K = z natively)."""
    transform = tio.Motion(
        degrees=np.zeros((1, 3)), translation=np.zeros((1, 3)), times=np.array([0.4]), image_interpolation='linear'
    )
    still_ours, still_native = run(*both(transform), ours, native)  # no motion: layout-independent identity
    assert_physically_equal(still_ours, still_native, rtol=1e-3)
    motion = tio.Motion(
        degrees=np.array([[5.0, 0, 10]]), translation=np.array([[2.0, 0, 0]]), times=np.array([0.4]),
        image_interpolation='linear',
    )
    out_ours, out_native = run(*both(motion), ours, native)
    with pytest.raises(AssertionError):
        assert_physically_equal(out_ours, out_native)
    assert torch.equal(out_ours['labelmap_0'].data, ours['labelmap_0'].data)
    # Equal to TorchIO's own result when the native tensor also has x last.
    transposed = tio.Transpose()(native)
    expected = motion(transposed)
    assert_physically_equal(out_ours, expected)


def test_random_swap_same_seed_draws_index_locations(ours, native):
    """RandomSwap: same seed, same index locations per tensor axis (so different physical patches)."""
    torch.manual_seed(0)
    out_ours = tio.RandomSwap(patch_size=3, num_iterations=5)(ours)
    history = out_ours.get_composed_history()
    swap = history[0]
    assert isinstance(swap, tio.Swap)
    locations, patch_size = swap.locations['images'], swap.patch_size['images']
    assert len(locations) == 5
    swapped_native = tio.Swap(patch_size[::-1], [(a[::-1], b[::-1]) for a, b in locations])(native)
    assert_physically_equal(out_ours, swapped_native)


def test_resample_to_spacing_index_order(ours):
    """A per-axis target spacing is D, H, W (z, y, x) on our layout."""
    out = tio.Resample((2.0, 1.5, 1.2))(ours)
    assert np.allclose(out['images'].spacing, (2.0, 1.5, 1.2))
    assert is_zyx(out)
