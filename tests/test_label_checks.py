"""Label maps off their image, implausible label values, integer label dtypes (issue 20, items 2, 3)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.cli import main as cli
from pyable_tio.errors import LabelValuesWarning, LoadError, ManifestError
from pyable_tio.checking.validate import validate

SIZE = (24, 20, 16)  # x, y, z
ORIGIN = (-12.0, -10.0, -8.0)  # the image's centre at the origin, as in MNI space


def _write(folder, label: sitk.Image, name: str = 'labels') -> tuple:
    """A one-subject manifest: an image on SIZE/ORIGIN and ``label`` as its label map."""
    image = synthetic.phantom(SIZE, (1.0, 1.0, 1.0), ORIGIN)
    sitk.WriteImage(image, str(folder / 't1.nii.gz'))
    path = folder / f'{name}.nii.gz'
    sitk.WriteImage(label, str(path))
    manifest = folder / 'manifest.json'
    manifest.write_text(json.dumps({'sub-01': {'images': ['t1.nii.gz'], 'labelmaps': [path.name]}}))
    return manifest, path


def _label(origin=ORIGIN, fill=None, dtype=np.uint8) -> sitk.Image:
    """A label map on SIZE at ``origin``: value 1 in a central box, or where ``fill`` (z, y, x slices) says."""
    array = np.zeros(SIZE[::-1], dtype)
    array[fill or (slice(4, 12), slice(5, 15), slice(6, 18))] = 1
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(origin)
    return image


@pytest.mark.parametrize('origin, words', [
    ((0.0, 0.0, 0.0), 'barely overlaps'),  # identity affine: only one octant on the image
    ((200.0, 0.0, 0.0), 'does not meet'),  # outside the field of view
])
def test_label_map_off_its_image_is_refused_naming_subject_field_and_file(tmp_path, origin, words):
    manifest, path = _write(tmp_path, _label(origin))
    problems = validate(manifest).problems
    assert len(problems) == 1
    problem = problems[0]
    assert problem.startswith(f'subject "sub-01": field "labelmaps": file {path}: its field of view {words} its images')
    assert 'overlap' in problem and 'identity affine' in problem
    with pytest.raises(ManifestError, match=words) as error:
        pt.subjects_from_manifest(manifest)
    assert str(path) in str(error.value) and 'sub-01' in str(error.value)
    assert cli.main(['validate', str(manifest)]) == 1


def test_label_map_whose_foreground_falls_outside_is_reported_with_how_much(tmp_path, capsys):
    # The fields of view overlap by 60% (headers pass) but the foreground lies in the part outside.
    shift = (ORIGIN[0] + 0.4 * SIZE[0], ORIGIN[1], ORIGIN[2])
    manifest, path = _write(tmp_path, _label(shift, fill=(slice(4, 12), slice(5, 15), slice(16, 24))))
    problems = validate(manifest).problems
    assert problems == [
        f'subject "sub-01": field "labelmaps": file {path}: 100% of its foreground (640 non-zero voxels)'
        ' falls outside the reference grid and is lost: a wrong header (origin, spacing, direction),'
        " another subject's file, or a reference that crops it"
    ]
    assert cli.main(['validate', str(manifest)]) == 1
    assert '100% of its foreground' in capsys.readouterr().err
    subject = pt.subjects_from_manifest(manifest)[0]
    with pytest.raises(LoadError, match='sub-01.*labelmaps.*100% of its foreground'):
        subject.load()


def test_label_map_partly_outside_is_a_note_and_a_warning(tmp_path):
    shift = (ORIGIN[0] + 0.4 * SIZE[0], ORIGIN[1], ORIGIN[2])
    # Columns 10..21 of the file, at x = 7.6..18.6 mm; the image ends at 11.5 mm: 4 of 12 kept.
    manifest, path = _write(tmp_path, _label(shift, fill=(slice(4, 12), slice(5, 15), slice(10, 22))))
    report = validate(manifest)
    assert report.problems == []
    assert any(n.startswith(f'subject "sub-01": field "labelmaps": file {path}: 67% of its foreground')
               for n in report.notes)
    subject = pt.subjects_from_manifest(manifest)[0]
    with pytest.warns(LabelValuesWarning, match='67% of its foreground'):
        subject.load()
    assert int(subject['labelmap_0'].data.sum()) == 4 * 10 * 8  # what the image grid holds of it


def test_label_sampler_empty_map_names_the_subject_and_the_file(tmp_path):
    manifest, path = _write(tmp_path, _label(fill=(slice(0, 1), slice(0, 1), slice(0, 1))))  # one corner voxel
    for fast in (True, False):
        queue = pt.queue_from_manifest(manifest, patch_size=(8, 8, 8), samples_per_volume=2, max_length=2,
                                       sampler='label', fast_patches=fast)
        with pytest.raises(RuntimeError) as error:
            next(iter(tio.SubjectsLoader(queue, batch_size=2)))
        message = str(error.value)
        assert message.startswith(f'subject "sub-01": label map "labelmap_0" (file {path}): no voxel > 0'), fast
        assert 'tio.Pad((4, 4, 4))' in message


def test_many_valued_label_map_warns_with_the_fix(tmp_path):
    probability = (np.linspace(0, 255, np.prod(SIZE)).reshape(SIZE[::-1])).astype(np.uint8)
    image = sitk.GetImageFromArray(probability)
    image.SetOrigin(ORIGIN)
    manifest, path = _write(tmp_path, image, 'probability')
    report = validate(manifest)
    assert report.problems == []
    note = f'subject "sub-01": field "labelmaps": file {path}: label map holds 256 distinct values'
    assert any(n.startswith(note) and 'List it under "images"' in n for n in report.notes)
    subject = pt.subjects_from_manifest(manifest)[0]
    with pytest.warns(LabelValuesWarning, match='sub-01.*labelmaps.*256 distinct values'):
        subject.load()


def test_float_label_maps_come_out_as_integers_like_integer_ones(tmp_path):
    integer = _write(tmp_path, _label())[0]
    folder = tmp_path / 'float'
    folder.mkdir()
    floating = _write(folder, _label(dtype=np.float32))[0]
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # neither warns
        a, b = (pt.subjects_from_manifest(m)[0]['labelmap_0'].data for m in (integer, floating))
    assert a.dtype == b.dtype == torch.uint8
    assert torch.equal(a, b)
    cached = pt.subjects_from_manifest(floating, cache_dir=tmp_path / 'cache')[0]['labelmap_0'].data
    assert cached.dtype == torch.uint8


def test_identity_affine_label_map_of_an_mni_image_is_refused(tmp_path):
    """The issue's case: a T1 in MNI space (RAS, centred) and its label map saved with np.eye(4)."""
    import nibabel as nib

    shape = (48, 56, 48)  # 4 mm MNI152-like field of view
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (-96.0, -132.0, -78.0)
    t1 = np.random.RandomState(0).rand(*shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[12:36, 14:42, 12:36] = 1
    nib.save(nib.Nifti1Image(t1, affine), str(tmp_path / 't1.nii.gz'))
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / 'good.nii.gz'))
    nib.save(nib.Nifti1Image(labels, np.diag([4.0, 4.0, 4.0, 1.0])), str(tmp_path / 'identity.nii.gz'))
    manifest = {name: {'images': [str(tmp_path / 't1.nii.gz')], 'labelmaps': [str(tmp_path / f'{name}.nii.gz')]}
                for name in ('good', 'identity')}
    problems = validate(manifest).problems
    assert len(problems) == 1
    assert problems[0].startswith(f'subject "identity": field "labelmaps": file {tmp_path / "identity.nii.gz"}:'
                                  " its field of view barely overlaps its images'")


def test_foreground_lost_maps_the_file_through_its_transform_inverted():
    """One measure for validate, the reader and the QA sheet's in_grid, transforms included."""
    from pyable_tio.checking.labels import foreground_lost
    from pyable_tio.geometry.grid import Grid

    label = sitk.GetImageFromArray(np.ones((10, 10, 10), np.uint8))
    grid = Grid.from_image(label)
    assert foreground_lost(label, grid) == (0.0, 1000)
    # Resampling reads grid point p at p + 5 mm in x: the file's voxels land 5 mm lower, half outside.
    lost, count = foreground_lost(label, grid, sitk.TranslationTransform(3, (5.0, 0.0, 0.0)))
    assert count == 1000 and lost == pytest.approx(0.5, abs=0.01)
    assert foreground_lost(label, grid, sitk.TranslationTransform(3, (0.2, 0.0, 0.0)))[0] == 0.0
    without_inverse = sitk.DisplacementFieldTransform(sitk.Image(4, 4, 4, sitk.sitkVectorFloat64))
    assert np.isnan(foreground_lost(label, grid, without_inverse)[0])  # GetInverse raises
