"""Manifest transforms in the reader: one interpolation, equal to SimpleITK's own resampling."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.geometry import registration
from pyable_tio.manifest.records import TransformEntry

LABELS = set(synthetic.LABEL_VALUES)


def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def rigid() -> sitk.Euler3DTransform:
    return sitk.Euler3DTransform((12.0, 10.0, 12.0), 0.1, -0.05, 0.2, (2.0, -1.5, 1.0))


def affine() -> sitk.AffineTransform:
    transform = sitk.AffineTransform(3)
    transform.SetCenter((12.0, 10.0, 12.0))
    transform.SetMatrix((1.05, 0.08, 0.0, -0.04, 0.95, 0.05, 0.02, 0.0, 1.1))
    transform.SetTranslation((-1.0, 2.0, 0.5))
    return transform


def field(reference: sitk.Image) -> sitk.Image:
    """A smooth displacement field (mm, LPS) on a coarser grid than the reference."""
    grid = sitk.Image([12, 10, 8], sitk.sitkVectorFloat64, 3)
    grid.SetSpacing((2.2, 2.4, 3.6))
    grid.SetOrigin((-1.0, -1.0, -1.0))
    z, y, x = np.meshgrid(*[np.arange(n) for n in (8, 10, 12)], indexing='ij')
    vectors = np.stack([2.0 * np.sin(y / 3.0), 1.5 * np.cos(x / 4.0), 1.0 * np.sin(z / 2.0)], axis=-1)
    displacement = sitk.GetImageFromArray(vectors, isVector=True)
    displacement.CopyInformation(grid)
    return displacement


@pytest.fixture()
def files(tmp_path):
    reference = synthetic.phantom(size=(24, 20, 24), spacing=(1.0, 1.0, 1.0), seed=1)
    moving = synthetic.phantom(size=(20, 18, 16), spacing=(1.2, 1.1, 1.5), origin=(1.0, -1.0, 0.5),
                               direction=synthetic.oblique_direction(10.0, 'x'), seed=2)
    labels = synthetic.label_map(moving)
    return {
        'reference': write(reference, tmp_path / 'ref.nii.gz'),
        'moving': write(moving, tmp_path / 'mov.nii.gz'),
        'labels': write(labels, tmp_path / 'labels.nii.gz'),
        'folder': tmp_path,
    }


def expected(files, transform, key='moving', interpolator=sitk.sitkLinear) -> np.ndarray:
    image = sitk.ReadImage(files[key])
    if key in ('moving', 'reference'):
        image = sitk.Cast(image, sitk.sitkFloat32)
    result = sitk.Resample(image, sitk.ReadImage(files['reference']), transform, interpolator, 0.0)
    return sitk.GetArrayFromImage(result)


def load(files, transforms, per_file=None, **kwargs):
    moving = files['moving'] if per_file is None else {'path': files['moving'], 'transforms': per_file}
    labels = files['labels'] if per_file is None else {'path': files['labels'], 'transforms': per_file}
    manifest = {'s': {'images': [files['reference'], moving], 'labelmaps': [labels], 'transforms': transforms}}
    return pt.subjects_from_manifest(manifest, root=files['folder'], **kwargs)[0]


@pytest.mark.parametrize('suffix', ['.tfm', '.txt', '.h5', '.mat'])
@pytest.mark.parametrize('make', [rigid, affine])
def test_transform_files_reproduce_simpleitk_resample(files, make, suffix):
    transform = make()
    sitk.WriteTransform(transform, str(files['folder'] / f't{suffix}'))
    subject = load(files, [], per_file=[f't{suffix}'])
    data = subject['images'].data.numpy()
    want = expected(files, transform)
    assert np.count_nonzero(want) > want.size // 3
    np.testing.assert_allclose(data[1], want, atol=1e-4, rtol=0)
    # The reference got the subject's (empty) list only: untouched.
    np.testing.assert_array_equal(data[0], sitk.GetArrayFromImage(sitk.ReadImage(files['reference'])))
    labels = subject['labelmap_0'].data.numpy()[0]
    np.testing.assert_array_equal(labels, expected(files, transform, 'labels', sitk.sitkNearestNeighbor))
    assert set(np.unique(labels).tolist()) <= LABELS


@pytest.mark.parametrize('suffix', ['.nii.gz', '.mha'])
def test_displacement_field_warps_as_simpleitk(files, suffix):
    displacement = field(sitk.ReadImage(files['reference']))
    write(displacement, files['folder'] / f'warp{suffix}')
    subject = load(files, [f'warp{suffix}'])
    transform = sitk.DisplacementFieldTransform(sitk.Image(displacement))
    np.testing.assert_allclose(subject['images'].data.numpy()[1], expected(files, transform), atol=1e-4, rtol=0)
    labels = subject['labelmap_0'].data.numpy()[0]
    np.testing.assert_array_equal(labels, expected(files, transform, 'labels', sitk.sitkNearestNeighbor))
    assert set(np.unique(labels).tolist()) == LABELS


def test_in_memory_transforms_and_invert(files):
    transform = rigid()
    subject = load(files, [transform])
    np.testing.assert_allclose(subject['images'].data.numpy()[1], expected(files, transform), atol=1e-4)
    assert subject['meta']['transforms_applied'] == ['all files: in-memory Euler3DTransform']
    # The file holds the opposite direction: invert=True gives the same result.
    sitk.WriteTransform(transform.GetInverse(), str(files['folder'] / 'back.tfm'))
    inverted = load(files, [{'path': 'back.tfm', 'invert': True}])
    np.testing.assert_allclose(inverted['images'].data.numpy()[1], expected(files, transform), atol=1e-4)
    assert inverted['meta']['transforms_applied'][0].endswith('back.tfm (inverted)')


def resample(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    return sitk.Resample(image, reference, transform, sitk.sitkLinear, 0.0)


def test_list_composes_as_the_seed_applies_it(files):
    """[A, B] gives img(A(B(p))): CompositeTransform([A, B]) exactly, sequential application approximately."""
    first, second = rigid(), affine()
    for name, transform in (('first.tfm', first), ('second.tfm', second)):
        sitk.WriteTransform(transform, str(files['folder'] / name))
    # ITK's CompositeTransform applies its last transform first: [A, B] maps p to A(B(p)).
    point = (3.0, -2.0, 5.0)
    composed = registration.compose([TransformEntry(files['folder'] / n) for n in ('first.tfm', 'second.tfm')])
    want_point = first.TransformPoint(second.TransformPoint(point))
    np.testing.assert_allclose(composed.TransformPoint(point), want_point, atol=1e-9)
    np.testing.assert_allclose(sitk.CompositeTransform([first, second]).TransformPoint(point), want_point, atol=1e-9)
    assert np.linalg.norm(np.subtract(second.TransformPoint(first.TransformPoint(point)), want_point)) > 0.3

    subject = load(files, ['first.tfm', 'second.tfm'])
    assert subject['meta']['transforms_applied'] == [
        f'all files: {files["folder"] / "first.tfm"}', f'all files: {files["folder"] / "second.tfm"}']
    reference = sitk.ReadImage(files['reference'])
    moving = sitk.Cast(sitk.ReadImage(files['moving']), sitk.sitkFloat32)
    data = subject['images'].data.numpy()[1]
    once = sitk.GetArrayFromImage(resample(moving, reference, sitk.CompositeTransform([first, second])))
    np.testing.assert_allclose(data, once, atol=1e-4)
    labels = subject['labelmap_0'].data.numpy()[0]
    np.testing.assert_array_equal(
        labels, expected(files, sitk.CompositeTransform([first, second]), 'labels', sitk.sitkNearestNeighbor))
    # The seed's loop: each applyTransform(t) resamples the previous result at t(p) (two interpolations).
    sequential = moving
    for transform in (first, second):
        sequential = resample(sequential, reference, transform)
    twice = sitk.GetArrayFromImage(sequential)
    inside = (data != 0) & (twice != 0)
    inside[:3], inside[-3:], inside[:, :3], inside[:, -3:], inside[..., :3], inside[..., -3:] = (False,) * 6
    assert inside.sum() > data.size // 5
    difference = np.abs(data - twice)[inside]
    assert np.median(difference) < 1.0 and difference.mean() < 0.03 * np.abs(data[inside]).mean()
    # The other order is a different result: the order matters.
    swapped = sitk.GetArrayFromImage(resample(moving, reference, sitk.CompositeTransform([second, first])))
    assert np.abs(swapped - data)[inside].mean() > 3 * difference.mean()


def test_file_subject_and_inverted_field_lists_concatenate_in_seed_order(files):
    """A file's list, then the subject's: [F_1, F_2, S_1, S_2] with invert flags and a displacement field."""
    folder = files['folder']
    sitk.WriteTransform(rigid().GetInverse(), str(folder / 'rigid_back.tfm'))
    sitk.WriteTransform(affine(), str(folder / 'affine.tfm'))
    shift = sitk.TranslationTransform(3, (1.5, -2.0, 1.0))
    sitk.WriteTransform(shift, str(folder / 'shift.tfm'))
    displacement = field(sitk.ReadImage(files['reference']))
    write(displacement, folder / 'warp.nii.gz')
    per_file = [{'path': 'rigid_back.tfm', 'invert': True}, 'affine.tfm']
    subject = load(files, ['warp.nii.gz', 'shift.tfm'], per_file=per_file)
    applied = subject['meta']['transforms_applied']
    assert applied[0] == f'mov.nii.gz: {folder / "rigid_back.tfm"} (inverted)'
    assert applied[-2:] == [f'all files: {folder / "warp.nii.gz"}', f'all files: {folder / "shift.tfm"}']
    warp = sitk.DisplacementFieldTransform(sitk.Image(displacement))
    chain = [rigid(), affine(), warp, shift]
    point = (9.0, 8.0, 11.0)
    want_point = point
    for transform in reversed(chain):  # the last of the list meets the grid point first
        want_point = transform.TransformPoint(want_point)
    reader = subject['images'].reader
    composed = registration.compose(reader.transforms[files['moving']])
    np.testing.assert_allclose(composed.TransformPoint(point), want_point, atol=1e-9)
    data = subject['images'].data.numpy()[1]
    np.testing.assert_allclose(data, expected(files, sitk.CompositeTransform(chain)), atol=1e-4, rtol=0)
    labels = subject['labelmap_0'].data.numpy()[0]
    want_labels = expected(files, sitk.CompositeTransform(chain), 'labels', sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(labels, want_labels)
    assert set(np.unique(labels).tolist()) <= LABELS
    # The reference image got the subject's list only.
    np.testing.assert_allclose(
        subject['images'].data.numpy()[0],
        expected(files, sitk.CompositeTransform([warp, shift]), 'reference'), atol=1e-4, rtol=0)
    swapped = expected(files, sitk.CompositeTransform(chain[::-1]))
    assert np.abs(swapped - data).mean() > 10 * np.abs(expected(files, sitk.CompositeTransform(chain)) - data).mean()


def test_bad_transform_files_name_subject_and_file(files):
    folder = files['folder']
    (folder / 'broken.tfm').write_text('#Insight Transform File V1.0\nnot a transform\n')
    with pytest.raises(pt.ManifestError) as info:
        load(files, ['broken.tfm'])
    message = str(info.value)
    assert 'subject "s"' in message and 'broken.tfm' in message and 'unreadable transform' in message
    write(sitk.ReadImage(files['reference']), folder / 'scalar.nii.gz')
    with pytest.raises(pt.ManifestError, match='scalar.nii.gz: a displacement field needs 3 components'):
        load(files, ['scalar.nii.gz'])
    sitk.WriteTransform(sitk.Euler2DTransform(), str(folder / 'flat.tfm'))
    with pytest.raises(pt.ManifestError, match='flat.tfm: a 2-D transform cannot map a 3-D grid'):
        load(files, ['flat.tfm'])
    bspline = sitk.BSplineTransformInitializer(sitk.ReadImage(files['reference']), [3, 3, 3])
    sitk.WriteTransform(bspline, str(folder / 'bspline.tfm'))
    with pytest.raises(pt.ManifestError, match='bspline.tfm: BSplineTransform has no inverse'):
        load(files, [{'path': 'bspline.tfm', 'invert': True}])


def test_transform_removed_after_build_is_a_load_error_naming_it(files):
    sitk.WriteTransform(rigid(), str(files['folder'] / 'gone.tfm'))
    subject = load(files, ['gone.tfm'])
    (files['folder'] / 'gone.tfm').unlink()
    with pytest.raises(pt.LoadError) as info:
        subject['images'].load()
    message = str(info.value)
    assert 'subject "s"' in message and 'ref.nii.gz' in message and 'gone.tfm' in message


def test_per_file_transforms_in_every_manifest_format(files):
    folder = files['folder']
    sitk.WriteTransform(rigid(), str(folder / 'r.tfm'))
    sitk.WriteTransform(affine().GetInverse(), str(folder / 'a_inv.tfm'))
    item = {'path': 'mov.nii.gz', 'transforms': ['r.tfm', {'path': 'a_inv.tfm', 'invert': True}]}
    want = (TransformEntry(folder / 'r.tfm'), TransformEntry(folder / 'a_inv.tfm', True))
    (folder / 'm.json').write_text(json.dumps({'s': {'images': ['ref.nii.gz', item]}}))
    pd.DataFrame({'id': ['s'], 'image_paths': [json.dumps(['ref.nii.gz', item])]}).to_csv(folder / 'm.csv', index=False)
    pd.DataFrame({
        'id': ['s', 's'], 'sequence': ['a_t1', 'b_t2'], 'path': ['ref.nii.gz', 'mov.nii.gz'],
        'transforms': ['', json.dumps(item['transforms'])],
    }).to_csv(folder / 'images.csv', index=False)
    sources = {
        'dict': {'s': {'images': [files['reference'], {**item, 'path': files['moving']}]}},
        'json': folder / 'm.json', 'csv': folder / 'm.csv', 'multi-csv': [folder / 'images.csv'],
    }
    reference_data = None
    for name, source in sources.items():
        manifest = pt.read_manifest(source, root=folder if name == 'dict' else None)
        assert manifest['s'].images[1].transforms == want, name
        assert manifest['s'].images[0].transforms == (), name
        data = pt.subjects_from_manifest(manifest)[0]['images'].data.numpy()
        if reference_data is None:
            reference_data = data
            composite = sitk.CompositeTransform([rigid(), affine()])  # the list, as given
            np.testing.assert_allclose(data[1], expected(files, composite), atol=1e-4)
        np.testing.assert_array_equal(data, reference_data)


def test_cache_keys_carry_the_key_version(files, tmp_path):
    """Lists changed meaning (seed order): keys of 0.1.0 volumes must never match again."""
    from pyable_tio.constants import CACHE_KEY_VERSION

    reader = load(files, [])['images'].reader
    inputs = reader.entries[0].cache_inputs(reader.grid, lambda path: 'f' * 64)
    assert CACHE_KEY_VERSION >= 2 and inputs['key_version'] == CACHE_KEY_VERSION


def test_volume_cache_follows_transform_contents(files, tmp_path):
    path = files['folder'] / 'shift.tfm'
    sitk.WriteTransform(sitk.TranslationTransform(3, (2.0, 0.0, 0.0)), str(path))
    cache = tmp_path / 'cache'
    first = load(files, ['shift.tfm'], cache_dir=cache)['images'].data.numpy()
    sitk.WriteTransform(sitk.TranslationTransform(3, (0.0, -3.0, 0.0)), str(path))  # same path, new content
    second = load(files, ['shift.tfm'], cache_dir=cache)['images'].data.numpy()
    want = expected(files, sitk.TranslationTransform(3, (0.0, -3.0, 0.0)))
    np.testing.assert_allclose(second[1], want, atol=1e-4)
    assert not np.allclose(first[1], second[1])


def test_describe_transform_is_readable():
    assert registration.describe_transform(rigid()).startswith('Euler3DTransform: rotation (5.73, -2.86, 11.46) deg')
    composite = sitk.CompositeTransform([affine(), rigid()])  # rigid applies first
    text = registration.describe_transform(composite)
    assert text.index('Euler3DTransform') < text.index('AffineTransform')


def test_multi_csv_roi_and_subject_transform_columns(files):
    folder = files['folder']
    sitk.WriteTransform(rigid(), str(folder / 'r.tfm'))
    pd.DataFrame({'id': ['s'], 'sequence': ['t1'], 'path': ['ref.nii.gz']}).to_csv(folder / 'images.csv', index=False)
    pd.DataFrame({'id': ['s'], 'label_type': ['tissue'], 'path': ['labels.nii.gz'], 'transforms': ['r.tfm']}
                 ).to_csv(folder / 'labelmaps.csv', index=False)
    pd.DataFrame({'id': ['s'], 'transforms': ['[{"path": "r.tfm", "invert": true}]']}).to_csv(
        folder / 'subjects.csv', index=False)
    record = pt.read_manifest([folder / 'images.csv', folder / 'labelmaps.csv', folder / 'subjects.csv'])['s']
    assert record.transforms == (TransformEntry(folder / 'r.tfm', True),)
    assert record.labelmaps[0].transforms == (TransformEntry(folder / 'r.tfm'),)
    subject = pt.subjects_from_manifest([folder / 'images.csv', folder / 'labelmaps.csv', folder / 'subjects.csv'])[0]
    # Subject transform (inverse of r) then the label map's own (r): the identity.
    labels = subject['labelmap_0'].data.numpy()[0]
    want = expected(files, sitk.CompositeTransform([rigid(), rigid().GetInverse()]), 'labels', sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(labels, want)
