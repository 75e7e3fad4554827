"""pt.monai_dataset: MONAI items from pyable-tio's readers, and MONAI's transforms on them, physically.

Reference: MONAI's own ``LoadImaged`` + ``EnsureChannelFirstd`` + ``ResampleToMatchd`` on the same
files (arrays in I,J,K = x,y,z order). Ours are Z,Y,X, so per-axis parameters are mapped
(ours axis 0 = z = their axis 2). Every comparison goes through world coordinates: each output's
affine maps our voxels to RAS points, which must be voxel centres of MONAI's output (grids that
coincide, with the index map we expect), where the values must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic

monai = pytest.importorskip('monai')
from monai import transforms as mt  # noqa: E402
from monai.data import MetaTensor  # noqa: E402

LABELS = set(synthetic.LABEL_VALUES)
KEYS = ['images', 'labelmap_0']
#: Their keys for ours: their "labels" is our "labelmap_0".
THEIRS = {'images': 'images', 'labelmap_0': 'labels'}
#: Index maps from our voxel (d, h, w) to theirs: reversed axes (Z,Y,X -> I,J,K), or the same.
REVERSED = np.eye(3)[::-1]
SAME = np.eye(3)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """An oblique T1 reference, an oblique T2 covering it with margin, labels on the T1 grid."""
    folder = tmp_path_factory.mktemp('monai')
    t1 = synthetic.phantom((20, 16, 12), (1.0, 1.2, 1.5), (3.0, -2.0, 1.0), synthetic.oblique_direction(10, 'z'), 0)
    # The T2 covers the T1 field of view with margin: no FOV edge, where SimpleITK and MONAI pad differently.
    t2 = synthetic.phantom((36, 36, 26), (1.1, 1.1, 1.6), (-8.0, -12.0, -9.0), synthetic.oblique_direction(8, 'x'), 1)
    labels = synthetic.label_map(t1)
    paths = {name: folder / f'{name}.nii.gz' for name in ('t1', 't2', 'labels')}
    for name, image in zip(paths, (t1, t2, labels)):
        sitk.WriteImage(image, str(paths[name]))
    return paths


@pytest.fixture(scope='module')
def manifest(files):
    return {'s0': {'images': [str(files['t1']), str(files['t2'])], 'labelmaps': [str(files['labels'])], 'age': 40}}


@pytest.fixture
def ours(manifest):
    return pt.monai_dataset(manifest)[0]


@pytest.fixture
def theirs(files):
    keys = ['t1', 't2', 'labels']
    load = mt.Compose([
        mt.LoadImaged(keys, image_only=True),
        mt.EnsureChannelFirstd(keys),
        mt.ResampleToMatchd(['t2'], key_dst='t1', mode='bilinear', padding_mode='zeros'),
        mt.ResampleToMatchd(['labels'], key_dst='t1', mode='nearest', padding_mode='zeros'),
        mt.ConcatItemsd(['t1', 't2'], 'images'),
        mt.DeleteItemsd(['t1', 't2']),
    ])
    return load({key: str(path) for key, path in files.items()})


def pairs(ours: MetaTensor, theirs: MetaTensor, index_map: np.ndarray | None = REVERSED):
    """Our values and theirs at the same world points (our voxel centres), C x N each.

    Asserts the grids coincide: each of our voxel centres is one of theirs, by ``index_map``
    (a signed permutation of the axes) when given, and every one of our voxels has a partner.
    """
    to_theirs = np.linalg.inv(theirs.affine.double().numpy()) @ ours.affine.double().numpy()
    rotation = to_theirs[:3, :3]
    assert np.allclose(rotation, np.round(rotation), atol=1e-4), f'grids do not coincide:\n{to_theirs}'
    if index_map is not None:
        assert np.allclose(np.abs(rotation), index_map, atol=1e-4), f'unexpected axis map:\n{rotation}'
    shape = ours.shape[1:]
    index = np.indices(shape).reshape(3, -1)
    mapped = np.rint(rotation @ index + to_theirs[:3, 3:]).astype(int)
    inside = np.all((mapped >= 0) & (mapped < np.array(theirs.shape[1:])[:, None]), axis=0)
    assert inside.all(), f'{(~inside).sum()} of our voxels are outside their grid'
    a = ours.as_tensor().reshape(ours.shape[0], -1).double().numpy()
    b = theirs.as_tensor().double().numpy()[:, mapped[0], mapped[1], mapped[2]]
    return a, b


def assert_same(ours_item, theirs_item, index_map=REVERSED, atol=1e-4):
    for key in KEYS:
        a, b = pairs(ours_item[key], theirs_item[THEIRS[key]], index_map)
        np.testing.assert_allclose(a, b, atol=atol, err_msg=key)
    labels = ours_item['labelmap_0']
    values = set(torch.unique(labels.as_tensor()).tolist())
    assert values <= LABELS and all(float(v).is_integer() for v in values), values


def test_items_are_the_torchio_subjects_as_meta_tensors(manifest, files, ours):
    subject = pt.subjects_from_manifest(manifest)[0]
    subject.load()
    assert set(ours) == {'images', 'labelmap_0', 'id', 'meta', 'age'}
    assert ours['id'] == 's0' and ours['age'] == 40 and ours['meta']['reference_used'] == subject['meta']['reference_used']
    for key in KEYS:
        tensor = ours[key]
        assert isinstance(tensor, MetaTensor)
        assert torch.equal(tensor.as_tensor(), subject[key].data)
        assert tensor.dtype == subject[key].data.dtype  # labels stay uint8
        np.testing.assert_array_equal(tensor.affine.numpy(), subject[key].affine)
        np.testing.assert_array_equal(tensor.meta['original_affine'], subject[key].affine)
        assert tuple(tensor.meta['spatial_shape']) == tuple(subject[key].spatial_shape)
        assert tensor.meta['space'] == 'RAS'
    assert ours['images'].meta['filename_or_obj'] == str(files['t1'])
    assert ours['labelmap_0'].meta['filename_or_obj'] == str(files['labels'])
    # The affine is index (d, h, w) -> RAS: voxel (1, 2, 3) is the T1's (x, y, z) = (3, 2, 1) point.
    t1 = sitk.ReadImage(str(files['t1']))
    lps = np.array(t1.TransformIndexToPhysicalPoint((3, 2, 1)))
    ras = ours['images'].affine.numpy() @ [1, 2, 3, 1]
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)


def test_items_equal_monai_loading_physically(ours, theirs):
    assert_same(ours, theirs)


def test_cache_serves_the_same_items(manifest, tmp_path, ours):
    cached = pt.monai_dataset(manifest, cache_dir=tmp_path / 'cache')
    cold, warm = cached[0], cached[0]
    assert any((tmp_path / 'cache').rglob('*.npy'))
    for key in KEYS:
        assert torch.equal(cold[key].as_tensor(), ours[key].as_tensor())
        assert torch.equal(warm[key].as_tensor(), ours[key].as_tensor())


#: (ours, theirs, index map of the outputs): the same transform, per-axis parameters mapped.
MAPPED = {
    'Spacingd': (
        mt.Spacingd(KEYS, pixdim=(2.0, 1.5, 1.3), mode=('bilinear', 'nearest')),
        mt.Spacingd(['images', 'labels'], pixdim=(1.3, 1.5, 2.0), mode=('bilinear', 'nearest')),
        REVERSED,
    ),
    'Orientationd': (mt.Orientationd(KEYS, axcodes='RAS'), mt.Orientationd(['images', 'labels'], axcodes='RAS'), SAME),
    'NormalizeIntensityd': (
        mt.NormalizeIntensityd('images', channel_wise=True), mt.NormalizeIntensityd('images', channel_wise=True), REVERSED,
    ),
    'ScaleIntensityRanged': (
        mt.ScaleIntensityRanged('images', a_min=-10, a_max=30, b_min=0, b_max=1, clip=True),
        mt.ScaleIntensityRanged('images', a_min=-10, a_max=30, b_min=0, b_max=1, clip=True),
        REVERSED,
    ),
    # Axis 0 is z here, axis 2 after LoadImaged.
    'RandFlipd': (mt.RandFlipd(KEYS, prob=1, spatial_axis=0), mt.RandFlipd(['images', 'labels'], prob=1, spatial_axis=2), REVERSED),
    # The (h, w) plane is their (j, i): the same k turns the other way round in their axes.
    'RandRotate90d': (
        mt.RandRotate90d(KEYS, prob=1, max_k=3, spatial_axes=(1, 2)),
        mt.RandRotate90d(['images', 'labels'], prob=1, max_k=3, spatial_axes=(1, 0)),
        REVERSED,
    ),
    # A rotation about our axis 0 (z) by a is one about their axis 2 by -a (reversing the axes is
    # a reflection); scales and translations (voxels) per axis are reversed.
    'RandAffined': (
        mt.RandAffined(KEYS, prob=1, rotate_range=((0.3, 0.3), 0, 0), scale_range=((0.1, 0.1), (-0.1, -0.1), (0.05, 0.05)),
                       translate_range=((1, 1), (2, 2), (-1, -1)), mode=('bilinear', 'nearest'), padding_mode='zeros'),
        mt.RandAffined(['images', 'labels'], prob=1, rotate_range=(0, 0, (-0.3, -0.3)),
                       scale_range=((0.05, 0.05), (-0.1, -0.1), (0.1, 0.1)), translate_range=((-1, -1), (2, 2), (1, 1)),
                       mode=('bilinear', 'nearest'), padding_mode='zeros'),
        REVERSED,
    ),
}


@pytest.mark.parametrize('name', list(MAPPED))
def test_monai_transforms_equal_monai_pipeline_physically(name, ours, theirs):
    mine, reference, index_map = MAPPED[name]
    mine.set_random_state(3) if hasattr(mine, 'set_random_state') else None
    reference.set_random_state(3) if hasattr(reference, 'set_random_state') else None
    out, expected = mine(ours), reference(theirs)
    if name not in ('NormalizeIntensityd', 'ScaleIntensityRanged'):
        assert not torch.equal(out['labelmap_0'].affine, ours['labelmap_0'].affine)  # MONAI moved the grid
    assert_same(out, expected, index_map, atol=1e-3 if name == 'NormalizeIntensityd' else 1e-4)


def test_rand_3d_elastic_equals_monai_with_the_same_field(ours, theirs):
    """Their random field is ours with axes and components reversed (Z,Y,X -> X,Y,Z)."""
    kwargs = {'sigma_range': (2, 2), 'magnitude_range': (3, 3), 'prob': 1, 'mode': ('bilinear', 'nearest'),
              'padding_mode': 'zeros'}
    mine = mt.Rand3DElasticd(KEYS, **kwargs).set_random_state(5)
    out = mine(ours)
    reference = mt.Rand3DElasticd(['images', 'labels'], **kwargs)
    field = mine.rand_3d_elastic.rand_offset
    reference.rand_3d_elastic.randomize = lambda grid_size: None  # replay our field instead
    reference.rand_3d_elastic.rand_offset = np.ascontiguousarray(field[::-1].transpose(0, 3, 2, 1))
    reference.rand_3d_elastic.magnitude, reference.rand_3d_elastic.sigma = 3.0, 2.0
    expected = reference(theirs)
    assert not torch.equal(out['images'].as_tensor(), ours['images'].as_tensor())
    assert_same(out, expected, atol=1e-3)


@pytest.mark.parametrize('name', ['RandCropByPosNegLabeld', 'RandSpatialCropSamplesd'])
def test_random_crops_are_physically_the_monai_volume(name, ours, theirs):
    if name == 'RandCropByPosNegLabeld':
        crop = mt.RandCropByPosNegLabeld(KEYS, 'labelmap_0', spatial_size=(6, 8, 10), pos=1, neg=0, num_samples=4)
    else:
        crop = mt.RandSpatialCropSamplesd(KEYS, roi_size=(6, 8, 10), num_samples=4, random_size=False)
    crop.set_random_state(1)
    patches = crop(ours)
    assert len(patches) == 4
    for patch in patches:
        assert tuple(patch['images'].shape) == (2, 6, 8, 10)
        assert patch['id'] == 's0'
        assert_same(patch, theirs)  # each crop is the MONAI-loaded volume at the same world points
        if name == 'RandCropByPosNegLabeld':
            assert patch['labelmap_0'][0, 3, 4, 5] > 0  # pos=1: centred on the foreground


def test_invertd_brings_a_prediction_back_to_the_item_grid(ours):
    augment = mt.Compose([
        mt.Orientationd(KEYS, axcodes='RAS'),
        mt.RandFlipd(KEYS, prob=1, spatial_axis=1),
        mt.RandRotate90d(KEYS, prob=1, spatial_axes=(0, 1)),
    ])
    augment.set_random_state(0)
    out = augment(ours)
    out['pred'] = out['labelmap_0'].clone()  # a "prediction" on the augmented grid
    inverted = mt.Invertd('pred', transform=augment, orig_keys='labelmap_0', nearest_interp=True)(out)
    pred = inverted['pred']
    assert pred.shape == ours['labelmap_0'].shape
    np.testing.assert_allclose(pred.affine.numpy(), ours['labelmap_0'].affine.numpy(), atol=1e-6)
    assert torch.equal(pred.as_tensor().to(torch.uint8), ours['labelmap_0'].as_tensor())


def test_to_native_accepts_a_meta_tensor_prediction(manifest, files):
    dataset = pt.monai_dataset(manifest)
    crop = mt.SpatialCropd(KEYS, roi_start=(2, 3, 4), roi_end=(9, 12, 16))
    pred = crop(dataset[0])['labelmap_0']  # a prediction on a crop, located by its affine
    native = pt.to_native(pred, dataset.data[0], target='labelmap_0')
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(files['labels'])))
    got = sitk.GetArrayFromImage(native)
    assert got.shape == original.shape
    np.testing.assert_array_equal(got[2:9, 3:12, 4:16], original[2:9, 3:12, 4:16])
    assert got.sum() == got[2:9, 3:12, 4:16].sum()  # zero outside the crop


def test_monai_dataloader_batches_patches_with_meta(manifest, tmp_path):
    from monai.data import DataLoader, list_data_collate

    crop = mt.RandSpatialCropSamplesd(KEYS, roi_size=(6, 8, 10), num_samples=2, random_size=False)
    dataset = pt.monai_dataset({**manifest, 's1': manifest['s0']}, transform=[crop, mt.RandFlipd(KEYS, prob=0.5)],
                               cache_dir=tmp_path)
    batch = next(iter(DataLoader(dataset, batch_size=2, num_workers=0, collate_fn=list_data_collate)))
    assert tuple(batch['images'].shape) == (4, 2, 6, 8, 10) and tuple(batch['labelmap_0'].shape) == (4, 1, 6, 8, 10)
    assert batch['id'] == ['s0', 's0', 's1', 's1']
    assert isinstance(batch['meta'], list) and batch['meta'][0]['reference_used'].endswith('t1.nii.gz')


def test_missing_monai_gives_a_clear_error(manifest, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_monai(name, *args, **kwargs):
        if name == 'monai' or name.startswith('monai.'):
            raise ImportError(f'No module named {name!r}')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_monai)
    with pytest.raises(ImportError, match=r'pyable-tio\[monai\]'):
        pt.monai_dataset(manifest)


# ----------------------------------------------------------------------------- item 3: tio.MonaiAdapter


@pytest.mark.parametrize('name', ['RandAffined', 'Rand3DElasticd', 'RandFlipd'])
def test_monai_augmentation_in_torchio_dataset_keeps_the_grid(name, manifest):
    """The content moves as MONAI moved the array; the grid stays (RandFlipd: no longer undone by the guard)."""
    if name == 'RandFlipd':
        make = lambda: mt.RandFlipd(KEYS, prob=1, spatial_axis=2)  # noqa: E731
    elif name == 'RandAffined':
        make = lambda: mt.RandAffined(KEYS, prob=1, rotate_range=(0.4, 0.2, 0.1), mode=('bilinear', 'nearest'))  # noqa: E731
    else:
        make = lambda: mt.Rand3DElasticd(KEYS, sigma_range=(2, 3), magnitude_range=(15, 20), prob=1,  # noqa: E731
                                         mode=('bilinear', 'nearest'))
    dataset = pt.dataset_from_manifest(manifest, transform=tio.MonaiAdapter(make().set_random_state(7)))
    sample = dataset[0]  # no LayoutError
    plain = pt.subjects_from_manifest(manifest)[0]
    plain.load()
    grid = plain['images'].affine
    # The reference: MONAI's own output array for the same random draw.
    expected = make().set_random_state(7)({key: MetaTensor(plain[key].data, affine=torch.as_tensor(grid)) for key in KEYS})
    for key in KEYS:
        np.testing.assert_array_equal(sample[key].affine, grid)  # the grid stays
        if key == 'images' or name != 'RandFlipd':  # (the phantom's labels are left-right symmetric)
            assert not torch.equal(sample[key].data, plain[key].data)  # the content moved
        np.testing.assert_allclose(sample[key].data.float(), expected[key].as_tensor().float(), atol=1e-5)
    assert set(torch.unique(sample['labelmap_0'].data).tolist()) <= LABELS


def test_deterministic_monai_transforms_keep_their_physics_in_torchio_datasets(manifest):
    """Orientationd only relabels axes: the guard puts the sample back in Z,Y,X, unchanged."""
    dataset = pt.dataset_from_manifest(manifest, transform=tio.MonaiAdapter(mt.Orientationd(KEYS, axcodes='RAS')))
    plain = pt.subjects_from_manifest(manifest)[0]
    plain.load()
    sample = dataset[0]
    for key in KEYS:
        assert torch.equal(sample[key].data, plain[key].data)
        np.testing.assert_allclose(sample[key].affine, plain[key].affine, atol=1e-6)


# ----------------------------------------------------------------------------- docs


def python_blocks(text: str) -> list[str]:
    import re

    return re.findall(r'```python\n(.+?)\n```', text, flags=re.DOTALL)


def readme_monai_section() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / 'README.md').read_text()
    start = text.index('## Using pyable-tio from MONAI')
    end = text.find('\n## ', start + 1)
    return text[start:end if end > 0 else None]


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / 'examples' / 'data' / 'make_sample_data.py'
    spec = importlib.util.spec_from_file_location('make_sample_data', script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path_factory.mktemp('sample')
    module.make_sample_data(folder)
    return folder


@pytest.mark.parametrize('where', ['docs/MONAI.md', 'README.md'])
def test_monai_docs_run_as_written(where, sample, capsys, monkeypatch):
    """Every python block, in order, in one namespace, in the sample data folder (as tests/test_docs.py)."""
    from pathlib import Path

    monkeypatch.chdir(sample)
    text = readme_monai_section() if where == 'README.md' else (Path(__file__).resolve().parents[1] / where).read_text()
    blocks = python_blocks(text)
    assert blocks, f'no python block in {where}'
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.replace('/tmp/sample', str(sample)), where, 'exec'), namespace)
    if where == 'docs/MONAI.md':
        subjects = pt.subjects_from_manifest(sample / 'sample_manifest.json', missing='empty')
        assert tuple(namespace['back']['pred'].shape[1:]) == subjects[1]['labelmap_0'].spatial_shape
        labels = sitk.ReadImage(str(sample / 'sub-02_labels.nii.gz'))
        assert namespace['native'].GetSize() == labels.GetSize()
        np.testing.assert_array_equal(namespace['sample']['images'].affine, subjects[0]['images'].affine)


def test_monai_augmentation_in_pyable_dataset_keeps_the_grid(manifest):
    augment = tio.MonaiAdapter(mt.RandAffined(KEYS, prob=1, rotate_range=(0.4, 0, 0), mode=('bilinear', 'nearest')))
    item = pt.PyableDataset(manifest, transforms=augment)[0]  # no LayoutError
    plain = pt.PyableDataset(manifest)[0]
    assert item['meta']['affine'] == plain['meta']['affine']
    assert not torch.equal(item['images'], plain['images'])
    assert set(torch.unique(item['labelmaps'][0]).tolist()) <= LABELS
