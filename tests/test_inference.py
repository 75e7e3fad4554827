"""Grid inference: an identity model rebuilds the subject's volume, in Z,Y,X, with its affine."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic


@pytest.fixture(scope='module')
def subject(tmp_path_factory):
    """An anisotropic, oblique reference (sizes differ per axis so any axis swap shows)."""
    folder = tmp_path_factory.mktemp('inference')
    image = synthetic.phantom(size=(21, 17, 13), spacing=(0.9, 1.1, 2.0), origin=(3.0, -2.0, 1.0),
                              direction=synthetic.oblique_direction(25.0, 'y'))
    path = folder / 't1.nii.gz'
    sitk.WriteImage(image, str(path))
    labels = synthetic.label_map(image)
    sitk.WriteImage(labels, str(folder / 'labels.nii.gz'))
    manifest = {'s': {'images': [str(path)], 'labelmaps': [str(folder / 'labels.nii.gz')]}}
    return pt.subjects_from_manifest(manifest)[0]


def run_identity(subject, patch_size, overlap, mode, key='images', batch_size=3):
    loader, aggregator = pt.inference_loader(subject, patch_size, overlap, batch_size=batch_size, overlap_mode=mode)
    seen = 0
    for batch in loader:
        data = batch[key][tio.DATA]
        assert data.shape[2:] == tuple(patch_size)
        aggregator.add_batch(data, batch[tio.LOCATION])
        seen += len(data)
    assert seen == len(loader.dataset)
    return aggregator


@pytest.mark.parametrize('mode', ['crop', 'average', 'hann'])
@pytest.mark.parametrize('overlap', [0, (2, 4, 6)])
def test_identity_model_reproduces_the_volume(subject, mode, overlap):
    expected = subject['images'].data
    assert expected.shape == (1, 13, 17, 21)  # Z, Y, X
    aggregator = run_identity(subject, (6, 8, 10), overlap, mode)
    output = aggregator.get_output_tensor()
    assert output.shape == expected.shape
    assert output.dtype == expected.dtype
    assert torch.equal(output, expected)


@pytest.mark.parametrize('mode', ['crop', 'average', 'hann'])
def test_label_map_identity_is_exact(subject, mode):
    labels = subject['labelmap_0'].data
    assert labels.dtype == torch.uint8
    aggregator = run_identity(subject, (6, 8, 10), (2, 4, 6), mode, key='labelmap_0')
    output = aggregator.get_output_tensor()
    assert torch.equal(output.to(labels.dtype), labels)
    assert torch.equal(output, labels.to(output.dtype))


def test_output_image_has_the_subject_affine_and_physical_points(subject):
    aggregator = run_identity(subject, (13, 17, 21), 0, 'crop')
    image = aggregator.get_output_image()
    assert isinstance(image, tio.ScalarImage)
    np.testing.assert_allclose(image.affine, subject['images'].affine)
    # The voxel (z, y, x) of the output is at the same physical point as in the file.
    reference = sitk.ReadImage(str(subject['images'].path))
    z, y, x = 5, 3, 17
    ras = image.affine @ np.array([z, y, x, 1.0])
    lps = np.asarray(reference.TransformIndexToPhysicalPoint((x, y, z)))
    np.testing.assert_allclose(ras[:3] * [-1, -1, 1], lps, atol=1e-6)
    assert image.data[0, z, y, x] == sitk.GetArrayFromImage(reference)[z, y, x]
    assert isinstance(aggregator.get_output_image(label=True), tio.LabelMap)


@pytest.mark.parametrize('mode', ['crop', 'average', 'hann'])
def test_padding_mode_crops_back(subject, mode):
    loader, aggregator = pt.inference_loader(subject, (6, 8, 10), 2, overlap_mode=mode, padding_mode=0)
    for batch in loader:
        aggregator.add_batch(batch['images'][tio.DATA], batch[tio.LOCATION])
    assert torch.equal(aggregator.get_output_tensor(), subject['images'].data)


def test_predict_subject_runs_a_model(subject):
    conv = torch.nn.Conv3d(1, 2, kernel_size=1)
    output = pt.predict_subject(conv, subject, (6, 8, 10), patch_overlap=2, overlap_mode='average')
    with torch.no_grad():
        expected = conv(subject['images'].data[None])[0]
    assert output.data.shape == (2, 13, 17, 21)
    torch.testing.assert_close(output.data, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(output.affine, subject['images'].affine)


def test_2d_subject_uses_one_slice_patches(tmp_path):
    image = synthetic.phantom(size=(20, 14), spacing=(0.8, 1.2), origin=(1.0, 2.0))
    path = tmp_path / 'slice.nii.gz'
    sitk.WriteImage(image, str(path))
    subject = pt.subjects_from_manifest({'s': {'images': [str(path)]}})[0]
    assert subject['images'].data.shape == (1, 1, 14, 20)
    loader, aggregator = pt.inference_loader(subject, 8, patch_overlap=2, overlap_mode='crop')
    for batch in loader:
        assert batch['images'][tio.DATA].shape[2:] == (1, 8, 8)
        aggregator.add_batch(batch['images'][tio.DATA], batch[tio.LOCATION])
    assert torch.equal(aggregator.get_output_tensor(), subject['images'].data)


def test_bad_arguments_are_reported(subject):
    with pytest.raises(ValueError, match='overlap_mode'):
        pt.inference_loader(subject, 4, overlap_mode='max')
    with pytest.raises(ValueError, match='even'):
        pt.inference_loader(subject, 6, patch_overlap=3)
    with pytest.raises(ValueError) as info:
        pt.inference_loader(subject, (14, 8, 8))
    shape = tuple(subject.spatial_shape)
    assert f'subject "{subject["id"]}"' in str(info.value)
    assert f'grid shape (D, H, W) {shape}' in str(info.value) and 'patch_size (14, 8, 8)' in str(info.value)
    assert 'np.' not in str(info.value)
    with pytest.raises(ValueError, match='patch_size'):
        pt.inference_loader(subject, (4, 4))
