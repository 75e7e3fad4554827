"""Predictions back to native space: label round trips, float inverse resampling, saved headers."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic

LABEL_SPACING = (2.0, 2.4, 3.6)


def rotation(*angles: tuple[float, str]) -> tuple[float, ...]:
    matrix = np.eye(3)
    for degrees, axis in angles:
        matrix = matrix @ np.asarray(synthetic.oblique_direction(degrees, axis)).reshape(3, 3)
    return tuple(matrix.ravel())


def random_labels(size, spacing, origin, direction, pixel_id=sitk.sitkInt16, seed=0) -> sitk.Image:
    """Independent random labels per voxel: any off-by-one voxel shows up."""
    rng = np.random.default_rng(seed)
    array = rng.choice(np.array(synthetic.LABEL_VALUES), size=tuple(size[::-1]))
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return sitk.Cast(image, pixel_id)


def rigid() -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform((10.0, 12.0, 14.0), 0.05, -0.08, 0.1, (1.3, -1.7, 0.9))
    return transform


def write_case(folder, fine: bool, with_transform: bool, oblique: bool = True):
    """A reference image and a coarser, anisotropic (oblique) label file around it."""
    label_direction = rotation((20.0, 'z'), (12.0, 'y')) if oblique else rotation()
    labels = random_labels((14, 12, 8), LABEL_SPACING, (-1.0, 0.5, -2.0), label_direction)
    if fine:
        # At most half the label's smallest spacing along every axis.
        ref_spacing, ref_size = (0.9, 0.8, 1.0), (30, 34, 26)
    else:
        ref_spacing, ref_size = (1.6, 1.5, 2.5), (17, 18, 11)
    reference = synthetic.phantom(ref_size, ref_spacing, (1.0, 2.0, 0.5), rotation((10.0, 'x')) if oblique else None)
    paths = {'ref': folder / 'ref.nii.gz', 'labels': folder / 'labels.nii.gz', 'tfm': folder / 'rigid.tfm'}
    sitk.WriteImage(reference, str(paths['ref']))
    sitk.WriteImage(labels, str(paths['labels']))
    # Compare with what is on disk (NIfTI stores spacing and direction in float32).
    reference, labels = sitk.ReadImage(str(paths['ref'])), sitk.ReadImage(str(paths['labels']))
    entry = str(paths['labels'])
    if with_transform:
        sitk.WriteTransform(rigid(), str(paths['tfm']))
        entry = {'path': str(paths['labels']), 'transforms': [str(paths['tfm'])]}
    subject = pt.subjects_from_manifest({'s': {'images': [str(paths['ref'])], 'labelmaps': [entry]}})[0]
    transform = rigid() if with_transform else sitk.Transform(3, sitk.sitkIdentity)
    return subject, reference, labels, transform


def inside_reference_fov(label: sitk.Image, reference: sitk.Image, transform: sitk.Transform, margin=1e-3):
    """Native voxels whose point, mapped to the reference grid, is inside it (numpy, Z,Y,X)."""
    inverse = transform.GetInverse()
    field = sitk.TransformToDisplacementField(
        inverse, sitk.sitkVectorFloat64, label.GetSize(), label.GetOrigin(), label.GetSpacing(), label.GetDirection()
    )
    size = np.asarray(label.GetSize())
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing='ij'), axis=-1)[..., ::-1]
    matrix = np.asarray(label.GetDirection()).reshape(3, 3) * np.asarray(label.GetSpacing())
    points = index @ matrix.T + np.asarray(label.GetOrigin()) + sitk.GetArrayFromImage(field)
    ref_matrix = np.asarray(reference.GetDirection()).reshape(3, 3) * np.asarray(reference.GetSpacing())
    continuous = (points - np.asarray(reference.GetOrigin())) @ np.linalg.inv(ref_matrix).T
    low, high = -0.5 + margin, np.asarray(reference.GetSize()) - 0.5 - margin
    inside = np.all((continuous > low) & (continuous < high), axis=-1)
    outside = np.any((continuous < -0.5 - margin) | (continuous > high + 2 * margin), axis=-1)
    return inside, outside


@pytest.mark.parametrize('oblique', [True, False], ids=['oblique', 'axis-aligned'])
@pytest.mark.parametrize('with_transform', [False, True], ids=['no-transform', 'rigid'])
def test_label_round_trip_is_exact_inside_fov_on_a_finer_grid(tmp_path, with_transform, oblique):
    subject, reference, labels, transform = write_case(tmp_path, True, with_transform, oblique)
    loaded = subject['labelmap_0'].data
    assert loaded.shape == (1, 26, 34, 30)
    native = pt.to_native(loaded, subject, target='labelmap_0', default_value=99)
    assert native.GetPixelID() == sitk.sitkInt16  # the label file's pixel type
    assert pt.geometry.grid.Grid.from_image(native).matches(pt.geometry.grid.Grid.from_image(labels), tolerance=0)
    back, original = sitk.GetArrayFromImage(native), sitk.GetArrayFromImage(labels)
    inside, outside = inside_reference_fov(labels, reference, transform)
    assert inside.sum() > 0.3 * inside.size and outside.sum() > 0  # a partial field of view
    assert set(np.unique(original[inside])) == set(synthetic.LABEL_VALUES)
    np.testing.assert_array_equal(back[inside], original[inside])
    assert np.all(back[outside] == 99)  # the default value, selectable


@pytest.mark.parametrize('with_transform', [False, True], ids=['no-transform', 'rigid'])
def test_label_round_trip_on_a_coarser_grid_equals_simpleitk(tmp_path, with_transform):
    subject, reference, labels, transform = write_case(tmp_path, False, with_transform)
    native = pt.to_native(subject['labelmap_0'].data, subject, target='labelmap_0')
    forward = sitk.Resample(labels, reference, transform, sitk.sitkNearestNeighbor, 0.0)
    expected = sitk.Resample(forward, labels, transform.GetInverse(), sitk.sitkNearestNeighbor, 0.0)
    back = sitk.GetArrayFromImage(native)
    np.testing.assert_array_equal(back, sitk.GetArrayFromImage(expected))
    inside, _ = inside_reference_fov(labels, reference, transform)
    assert not np.array_equal(back[inside], sitk.GetArrayFromImage(labels)[inside])  # really lossy here


def test_default_target_is_the_reference_and_argmax_is_nearest(tmp_path):
    subject, reference, _, _ = write_case(tmp_path, True, False)
    scores = torch.nn.functional.one_hot(subject['labelmap_0'].data[0].long(), 8).permute(3, 0, 1, 2).float()
    argmax = scores.argmax(0, keepdim=True)  # int64, 1 x D x H x W
    native = pt.to_native(argmax, subject)
    # Reference file without transform: the prediction is already on its grid.
    assert pt.geometry.grid.Grid.from_image(native).matches(pt.geometry.grid.Grid.from_image(reference), tolerance=0)
    assert native.GetPixelID() == sitk.sitkInt32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(native), subject['labelmap_0'].data[0].numpy())


def test_float_image_back_matches_simpleitk_inverse_resampling(tmp_path):
    ref = synthetic.phantom((28, 26, 20), (1.0, 1.0, 1.5), (0.0, 0.0, 0.0))
    t2 = synthetic.phantom((22, 20, 10), (1.2, 1.1, 3.0), (-2.0, 1.5, 1.0), rotation((15.0, 'z'), (8.0, 'x')), seed=3)
    paths = [tmp_path / 'ref.nii.gz', tmp_path / 't2.nii.gz']
    sitk.WriteImage(ref, str(paths[0]))
    sitk.WriteImage(t2, str(paths[1]))
    sitk.WriteTransform(rigid(), str(tmp_path / 'rigid.tfm'))
    entry = {'path': str(paths[1]), 'transforms': [str(tmp_path / 'rigid.tfm')]}
    subject = pt.subjects_from_manifest({'s': {'images': [str(paths[0]), entry]}})[0]
    channel = subject['images'].data[1:2]
    native = pt.to_native(channel, subject, target=('images', 1))
    assert native.GetPixelID() == sitk.sitkFloat32
    on_grid = sitk.GetImageFromArray(channel[0].numpy())
    on_grid.CopyInformation(ref)
    expected = sitk.Resample(on_grid, t2, rigid().GetInverse(), sitk.sitkLinear, 0.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(native), sitk.GetArrayFromImage(expected), atol=1e-4, rtol=0)
    # And it is close to the original scan where the reference covers it (two linear steps).
    inside, _ = inside_reference_fov(t2, ref, rigid(), margin=1.0)
    assert inside.sum() > 0.2 * inside.size
    error = np.abs(sitk.GetArrayFromImage(native) - sitk.GetArrayFromImage(t2))[inside]
    assert np.median(error) < 2.0  # phantom range is about 0..120
    # Probabilities with two channels become a vector image, linear by default.
    probabilities = torch.cat([channel, 1 - channel]) / 100
    native2 = pt.to_native(probabilities, subject, target=paths[1])
    assert native2.GetNumberOfComponentsPerPixel() == 2
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(native2)[..., 0], sitk.GetArrayFromImage(expected) / 100, atol=1e-5
    )


@pytest.mark.parametrize('suffix', ['.nii.gz', '.mha', '.nrrd'])
def test_saved_header_equals_target_header(tmp_path, suffix):
    subject, _, labels, _ = write_case(tmp_path, True, True)
    path = pt.save_prediction(subject['labelmap_0'].data.long(), subject, tmp_path / f'out{suffix}', target='labelmap_0')
    saved, target = sitk.ImageFileReader(), sitk.ImageFileReader()
    for reader, file in ((saved, path), (target, tmp_path / 'labels.nii.gz')):
        reader.SetFileName(str(file))
        reader.ReadImageInformation()
    # NIfTI stores the geometry as float32 (sform/qform): equal to float32 precision.
    atol = 1e-6 if suffix == '.nii.gz' else 1e-12  # text headers: last digit
    np.testing.assert_allclose(saved.GetOrigin(), target.GetOrigin(), atol=atol, rtol=0)
    np.testing.assert_allclose(saved.GetSpacing(), target.GetSpacing(), atol=atol, rtol=0)
    np.testing.assert_allclose(saved.GetDirection(), target.GetDirection(), atol=atol, rtol=0)
    assert saved.GetSize() == target.GetSize()
    assert saved.GetPixelID() == target.GetPixelID() == sitk.sitkInt16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temporary left


def test_roi_target_takes_the_roi_pixel_type(tmp_path):
    ref = synthetic.phantom((20, 18, 12), (1.0, 1.0, 1.5))
    roi = sitk.Cast(synthetic.label_map(ref) > 0, sitk.sitkUInt8)
    sitk.WriteImage(ref, str(tmp_path / 'ref.nii.gz'))
    sitk.WriteImage(roi, str(tmp_path / 'roi.nrrd'))
    subject = pt.subjects_from_manifest({'s': {'images': [str(tmp_path / 'ref.nii.gz')], 'rois': [str(tmp_path / 'roi.nrrd')]}})[0]
    mask = subject['roi_0'].data.bool()
    out = pt.save_prediction(mask, subject, tmp_path / 'mask.nii.gz', target=('rois', 0))
    saved = sitk.ReadImage(str(out))
    assert saved.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), sitk.GetArrayFromImage(roi))
    with pytest.raises(pt.inference.native.NativeSpaceError, match='do not fit the target pixel type'):
        pt.to_native(mask.int() * 300, subject, target='roi_0')


def test_subject_after_invertible_torchio_transforms(tmp_path):
    subject, _, labels, _ = write_case(tmp_path, True, True)
    augment = tio.Compose([tio.Flip(axes=(0, 2)), tio.Pad((2, 3, 1, 0, 4, 2)), tio.Crop((1, 0, 1, 0, 3, 1)),
                           tio.RescaleIntensity()])
    transformed = augment(subject)
    prediction = transformed['labelmap_0']  # an "identity model" on the augmented subject
    assert not torch.equal(prediction.data[..., :5], subject['labelmap_0'].data[..., :5])
    # Crop dropped the reader, not the way back: the subject's plan holds the transforms.
    native = pt.to_native(prediction.data, transformed, target='labelmap_0')
    direct = pt.to_native(subject['labelmap_0'].data, subject, target='labelmap_0')
    np.testing.assert_array_equal(sitk.GetArrayFromImage(native), sitk.GetArrayFromImage(direct))
    # original= still serves a subject rebuilt by hand (no plan, no reader).
    bare = tio.Subject(labelmap_0=tio.LabelMap(tensor=prediction.data, affine=prediction.affine))
    bare.applied_transforms = transformed.applied_transforms
    native = pt.to_native(prediction.data, bare, target='labelmap_0', original=subject)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(native), sitk.GetArrayFromImage(direct))
    # A tio.Image prediction carries its own affine.
    as_image = tio.LabelMap(tensor=prediction.data, affine=prediction.affine)
    native_image = pt.to_native(as_image, transformed, 'labelmap_0', original=subject)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(native_image), sitk.GetArrayFromImage(direct))


def test_subject_without_manifest_transforms_needs_no_original(tmp_path):
    subject, _, labels, _ = write_case(tmp_path, True, False)
    transformed = tio.Compose([tio.CropOrPad((20, 40, 24)), tio.Flip(1)])(subject)
    native = pt.to_native(transformed['labelmap_0'].data, transformed, target='labelmap_0')
    direct = pt.to_native(subject['labelmap_0'].data, subject, target='labelmap_0')
    back, expected = sitk.GetArrayFromImage(native), sitk.GetArrayFromImage(direct)
    kept = back != 0  # CropOrPad cut part of the grid away: those voxels are background now
    assert kept.sum() > 0.5 * np.count_nonzero(expected)
    np.testing.assert_array_equal(back[kept], expected[kept])


def test_non_invertible_torchio_transform_is_refused(tmp_path):
    subject, _, _, _ = write_case(tmp_path, True, False)
    transformed = tio.Lambda(lambda x: x.flip(-1))(subject)
    with pytest.raises(pt.inference.native.NativeSpaceError, match=r'subject "s".*Lambda has no inverse'):
        pt.to_native(transformed['labelmap_0'].data, transformed, target='labelmap_0')


def test_transform_without_inverse_is_a_clear_error(tmp_path):
    ref = synthetic.phantom((16, 16, 10), (1.0, 1.0, 1.5))
    sitk.WriteImage(ref, str(tmp_path / 'ref.nii.gz'))
    bspline = sitk.BSplineTransformInitializer(ref, [3, 3, 3])
    params = np.zeros(len(bspline.GetParameters()))
    params[5] = 0.5
    bspline.SetParameters(params.tolist())
    sitk.WriteTransform(bspline, str(tmp_path / 'warp.tfm'))
    entry = {'path': str(tmp_path / 'ref.nii.gz'), 'transforms': [str(tmp_path / 'warp.tfm')]}
    subject = pt.subjects_from_manifest({'sub-7': {'images': [entry]}})[0]
    with pytest.raises(pt.inference.native.NativeSpaceError, match=r'sub-7.*ref\.nii\.gz.*BSplineTransform.*no inverse'):
        pt.to_native(subject['images'].data, subject)
    assert not (tmp_path / 'never.nii.gz').exists()
    with pytest.raises(pt.inference.native.NativeSpaceError):
        pt.save_prediction(subject['images'].data, subject, tmp_path / 'never.nii.gz')
    assert not list(tmp_path.glob('*never*'))


def test_2d_label_round_trip(tmp_path):
    ref = synthetic.phantom((40, 36), (0.5, 0.6), (1.0, -1.0))
    labels = random_labels((18, 16, 1), (1.2, 1.3, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), sitk.sitkUInt8)
    labels = labels[:, :, 0]
    labels.SetDirection(synthetic.oblique_direction(10.0, 'z')[:2] + synthetic.oblique_direction(10.0, 'z')[3:5])
    sitk.WriteImage(ref, str(tmp_path / 'ref.nii.gz'))
    sitk.WriteImage(labels, str(tmp_path / 'labels.nii.gz'))
    subject = pt.subjects_from_manifest(
        {'s': {'images': [str(tmp_path / 'ref.nii.gz')], 'labelmaps': [str(tmp_path / 'labels.nii.gz')]}}
    )[0]
    assert subject['labelmap_0'].data.shape == (1, 1, 36, 40)
    native = pt.to_native(subject['labelmap_0'].data, subject, target='labelmap_0', default_value=255)
    assert native.GetDimension() == 2 and native.GetPixelID() == sitk.sitkUInt8
    forward = sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    expected = sitk.Resample(forward, labels, sitk.Transform(), sitk.sitkNearestNeighbor, 255.0)
    back = sitk.GetArrayFromImage(native)
    np.testing.assert_array_equal(back, sitk.GetArrayFromImage(expected))
    inside = back != 255
    assert inside.sum() > 0.3 * inside.size
    np.testing.assert_array_equal(back[inside], sitk.GetArrayFromImage(labels)[inside])


def test_bad_target_and_shape_are_reported(tmp_path):
    subject, _, _, _ = write_case(tmp_path, True, False)
    with pytest.raises(pt.inference.native.NativeSpaceError, match=r'subject "s".*target .nope.'):
        pt.to_native(subject['labelmap_0'].data, subject, target='nope')
    with pytest.raises(pt.inference.native.NativeSpaceError, match='C x D x H x W'):
        pt.to_native(subject['labelmap_0'].data[0], subject)
    with pytest.raises(pt.inference.native.NativeSpaceError, match=r'spatial shape \(13, 17, 15\)'):
        pt.to_native(subject['labelmap_0'].data[:, ::2, ::2, ::2], subject)


def test_prediction_on_a_coarser_grid_is_located_by_its_affine(tmp_path):
    subject, _, _, _ = write_case(tmp_path, True, False)
    resampled = tio.Resample(2.0)(subject)  # no inverse, but the affine holds the new grid
    native = pt.to_native(resampled['images'].data, resampled, target='images')
    on_grid = sitk.GetImageFromArray(resampled['images'].data[0].numpy())
    grid = pt.geometry.grid.ras_affine_to_grid(resampled['images'].affine, resampled['images'].spatial_shape)
    on_grid.SetSpacing(grid.spacing)
    on_grid.SetOrigin(grid.origin)
    on_grid.SetDirection(grid.direction)
    reference = sitk.ReadImage(str(tmp_path / 'ref.nii.gz'))
    expected = sitk.Resample(on_grid, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(native), sitk.GetArrayFromImage(expected), atol=1e-4)
    # The physical content stays in place: close to the reference itself in the interior.
    error = np.abs(sitk.GetArrayFromImage(native) - sitk.GetArrayFromImage(reference))[4:-4, 4:-4, 4:-4]
    assert np.median(error) < 5.0


def test_displacement_field_is_inverted_as_a_field(tmp_path):
    ref = synthetic.phantom((30, 28, 20), (1.0, 1.0, 1.0))
    sitk.WriteImage(ref, str(tmp_path / 'ref.nii.gz'))
    ref = sitk.ReadImage(str(tmp_path / 'ref.nii.gz'))
    # A smooth bump of up to 2.5 mm along x, zero at the borders.
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in ref.GetSize()[::-1]], indexing='ij')
    bump = 2.5 * np.exp(-((x - 15) ** 2 + (y - 14) ** 2 + (z - 10) ** 2) / (2 * 4.0**2))
    field = sitk.GetImageFromArray(np.stack([bump, 0 * bump, 0 * bump], axis=-1), isVector=True)
    field.CopyInformation(ref)
    sitk.WriteImage(field, str(tmp_path / 'warp.nii.gz'))
    entry = {'path': str(tmp_path / 'ref.nii.gz'), 'transforms': [str(tmp_path / 'warp.nii.gz')]}
    subject = pt.subjects_from_manifest({'s': {'images': [entry]}})[0]
    warped = subject['images'].data
    original = sitk.GetArrayFromImage(ref)
    assert np.abs(warped[0].numpy() - original).max() > 5  # the field really moves the content
    back = sitk.GetArrayFromImage(pt.to_native(warped, subject))
    forward = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    on_grid = sitk.GetImageFromArray(warped[0].numpy())
    on_grid.CopyInformation(ref)
    wrong_way = sitk.GetArrayFromImage(sitk.Resample(on_grid, ref, forward, sitk.sitkLinear, 0.0))
    core = (slice(3, -3),) * 3
    error, wrong_error = np.abs(back - original)[core], np.abs(wrong_way - original)[core]
    assert error.max() < 0.5 * wrong_error.max()
    assert error.mean() < 0.5 * wrong_error.mean()


def test_dataset_subject_with_layout_guard_and_reorientation(tmp_path):
    """dataset_from_manifest adds the Z,Y,X guard (ToZYX) to the history; the affine locates it."""
    subject, _, _, _ = write_case(tmp_path, True, True, oblique=False)
    manifest = {'s': {'images': [str(tmp_path / 'ref.nii.gz')],
                      'labelmaps': [{'path': str(tmp_path / 'labels.nii.gz'), 'transforms': [str(tmp_path / 'rigid.tfm')]}]}}
    dataset = pt.dataset_from_manifest(manifest, transform=tio.Compose([tio.Flip(0), tio.ToCanonical()]))
    item = dataset[0]
    names = [t.name for t in item.get_applied_transforms()]
    assert 'ToCanonical' in names and 'Flip' in names
    native = pt.to_native(item['labelmap_0'].data, item, target='labelmap_0', original=subject)
    direct = pt.to_native(subject['labelmap_0'].data, subject, target='labelmap_0')
    np.testing.assert_array_equal(sitk.GetArrayFromImage(native), sitk.GetArrayFromImage(direct))
