"""align=: a known rigid move is undone, composed with manifest transforms, cached by content."""

from __future__ import annotations

import inspect
import os
import re

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.cache import digest as hashing
from pyable_tio.geometry import alignment

SIZE = (36, 32, 28)
CENTRE = (17.5, 15.5, 13.5)
#: Points of the fixed image's interior (mm) where transforms are compared.
POINTS = [(x, y, z) for x in (9.0, 17.0, 26.0) for y in (8.0, 16.0, 24.0) for z in (7.0, 14.0, 20.0)]


def fixed_image() -> sitk.Image:
    """The phantom plus two off-centre blobs: no rotation leaves it unchanged."""
    base = synthetic.phantom(size=SIZE, spacing=(1.0, 1.0, 1.0), seed=1)
    blob = sitk.GaussianSource(sitk.sitkFloat32, SIZE, sigma=(3.0, 4.0, 2.5), mean=(10.0, 20.0, 9.0), scale=60.0)
    other = sitk.GaussianSource(sitk.sitkFloat32, SIZE, sigma=(2.0, 2.0, 3.0), mean=(25.0, 8.0, 18.0), scale=40.0)
    return base + blob + other


def moved_copy(image: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Same voxels, header moved by ``transform``: voxel ``i`` now lies at ``transform(x_i)``.

    Aligning this copy back onto ``image`` must find ``transform`` itself (ITK convention:
    reference point to file point). No interpolation: the truth is exact. Scalings go into the
    spacing, so the matrix times the direction must have orthogonal columns.
    """
    moved = sitk.Image(image)
    dim = image.GetDimension()
    origin = np.asarray(transform.TransformPoint(image.GetOrigin()))
    columns = np.asarray(image.GetDirection()).reshape(dim, dim) * np.asarray(image.GetSpacing())
    start = np.asarray(image.GetOrigin())
    moved_columns = np.stack([np.asarray(transform.TransformPoint(start + columns[:, k])) - origin
                              for k in range(dim)], axis=1)
    spacing = np.linalg.norm(moved_columns, axis=0)
    moved.SetSpacing(tuple(spacing))
    moved.SetDirection(tuple((moved_columns / spacing).ravel()))
    moved.SetOrigin(tuple(origin))
    return moved


def rigid_truth() -> sitk.Euler3DTransform:
    return sitk.Euler3DTransform(CENTRE, 0.06, -0.04, 0.08, (1.5, -2.0, 1.2))


def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def max_distance(found: sitk.Transform, truth: sitk.Transform) -> float:
    return max(float(np.linalg.norm(np.subtract(found.TransformPoint(p), truth.TransformPoint(p)))) for p in POINTS)


def interior_error(subject) -> float:
    """Mean absolute difference between the two channels in the central region."""
    data = subject['images'].data.numpy()
    core = (slice(7, 21), slice(8, 24), slice(9, 27))
    return float(np.abs(data[0][core] - data[1][core]).mean())


@pytest.fixture()
def pair(tmp_path):
    fixed = fixed_image()
    return write(fixed, tmp_path / 'fixed.nii.gz'), write(moved_copy(fixed, rigid_truth()), tmp_path / 'moving.nii.gz')


def test_known_rigid_move_is_undone_within_a_fraction_of_a_voxel(pair):
    fixed, moving = pair
    plain = pt.subjects_from_manifest({'s': {'images': [fixed, moving]}})[0]
    aligned = pt.subjects_from_manifest({'s': {'images': [fixed, moving]}}, align='rigid')[0]
    entry = aligned['images'].reader.transforms[moving][0]
    assert isinstance(entry.source, sitk.Transform)
    assert max_distance(entry.source, rigid_truth()) < 0.2  # voxels are 1 mm
    # The reference channel is untouched, the moved one now matches it.
    np.testing.assert_array_equal(aligned['images'].data[0], plain['images'].data[0])
    assert aligned['images'].reader.transforms[fixed] == ()
    assert interior_error(aligned) < 0.25 * interior_error(plain)
    applied = aligned['meta']['transforms_applied']
    assert len(applied) == 1 and applied[0].startswith('moving.nii.gz: rigid alignment onto fixed.nii.gz')
    assert 'Euler3DTransform' in applied[0]


def test_alignment_is_deterministic(pair):
    fixed, moving = pair
    found = [alignment.register(sitk.ReadImage(fixed), sitk.ReadImage(moving)) for _ in range(2)]
    # Seeded sampling: the same points every run; only summation order may differ (threads).
    np.testing.assert_allclose(found[0].GetParameters(), found[1].GetParameters(), atol=1e-6, rtol=0)


def test_alignment_goes_before_manifest_transforms(tmp_path):
    """The file was also shifted; the manifest's transform holds the shift, alignment the rest."""
    fixed = fixed_image()
    shift = sitk.TranslationTransform(3, (4.0, 0.0, -3.0))
    moving = moved_copy(moved_copy(fixed, rigid_truth()), shift)
    fixed_path = write(fixed, tmp_path / 'fixed.nii.gz')
    moving_path = write(moving, tmp_path / 'moving.nii.gz')
    sitk.WriteTransform(shift, str(tmp_path / 'shift.tfm'))
    manifest = {'s': {'images': [fixed_path, {'path': moving_path, 'transforms': ['shift.tfm']}]}}
    subject = pt.subjects_from_manifest(manifest, root=tmp_path, align='rigid')[0]
    entries = subject['images'].reader.transforms[moving_path]
    assert len(entries) == 2 and entries[0].source == tmp_path / 'shift.tfm'
    # grid point -> alignment -> manifest shift -> file point: the composition is the truth.
    whole = sitk.CompositeTransform([shift, entries[1].source])
    truth = sitk.CompositeTransform([shift, rigid_truth()])
    assert max_distance(whole, truth) < 0.2
    applied = subject['meta']['transforms_applied']
    assert applied[0].endswith('shift.tfm') and applied[1].startswith('moving.nii.gz: rigid alignment')


def test_affine_alignment_reduces_the_error(tmp_path):
    fixed = fixed_image()
    truth = sitk.AffineTransform(3)
    truth.SetCenter(CENTRE)
    truth.SetMatrix((np.asarray(rigid_truth().GetMatrix()).reshape(3, 3) @ np.diag([1.05, 0.96, 1.0])).ravel())
    truth.SetTranslation((1.0, -1.5, 0.5))
    paths = [write(fixed, tmp_path / 'fixed.nii.gz'), write(moved_copy(fixed, truth), tmp_path / 'moving.nii.gz')]
    plain = pt.subjects_from_manifest({'s': {'images': paths}})[0]
    aligned = pt.subjects_from_manifest({'s': {'images': paths}}, align='affine')[0]
    found = aligned['images'].reader.transforms[paths[1]][0].source
    assert found.GetName() == 'AffineTransform'
    assert max_distance(found, truth) < 1.0
    assert interior_error(aligned) < 0.5 * interior_error(plain)


def test_alignment_is_cached_by_content_and_reused(pair, tmp_path, monkeypatch):
    fixed, moving = pair
    cache = tmp_path / 'cache'
    manifest = {'s': {'images': [fixed, moving]}}
    first = pt.subjects_from_manifest(manifest, align='rigid', cache_dir=cache)[0]
    files = sorted((cache / 'alignment').iterdir())
    assert len(files) == 1 and files[0].suffix == '.tfm'  # no temporary left behind
    entry = first['images'].reader.transforms[moving][0]
    assert entry.source == files[0]
    assert max_distance(sitk.ReadTransform(str(files[0])), rigid_truth()) < 0.2
    assert str(files[0]) in first['meta']['transforms_applied'][0]

    def fail(*args, **kwargs):
        raise AssertionError('the cached alignment should have been reused')

    monkeypatch.setattr(alignment, 'register', fail)
    again = pt.subjects_from_manifest(manifest, align='rigid', cache_dir=cache)[0]
    assert again['images'].reader.transforms[moving][0] == entry
    np.testing.assert_array_equal(again['images'].data, first['images'].data)
    monkeypatch.undo()
    # New content under the same path: a new key, computed again.
    write(moved_copy(fixed_image(), sitk.Euler3DTransform(CENTRE, 0.0, 0.05, 0.0, (0.0, 1.0, 0.0))), moving)
    pt.subjects_from_manifest(manifest, align='rigid', cache_dir=cache)
    assert len(list((cache / 'alignment').iterdir())) == 2


def test_a_moving_image_replaced_while_it_is_aligned_never_stores_its_transform_under_the_old_key(
        pair, tmp_path, monkeypatch):
    """The moving file is replaced (os.replace) after the key is built and before it is read:
    the transform found on the new version must not be kept under the old version's key."""
    fixed, moving = pair
    other = write(moved_copy(fixed_image(), sitk.Euler3DTransform(CENTRE, 0.0, 0.05, 0.0, (0.0, 1.0, 0.0))),
                  tmp_path / 'other.nii.gz')
    first_version = tmp_path / 'first.nii.gz'
    first_version.write_bytes(open(moving, 'rb').read())
    cache, manifest = tmp_path / 'cache', {'s': {'images': [fixed, moving]}}
    real, done = alignment.backend.load, []

    def load(source, *args, **kwargs):
        if str(source) == moving and not done:
            done.append(1)
            replacement = tmp_path / 'replacement.nii.gz'
            replacement.write_bytes(open(other, 'rb').read())
            os.replace(replacement, moving)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(alignment.backend, 'load', load)
    pt.subjects_from_manifest(manifest, align='rigid', cache_dir=cache)
    assert done
    monkeypatch.undo()
    # The first version back, as a new process sees it: its own alignment, never the other's.
    os.replace(first_version, moving)
    hashing.forget_digests()
    subject = pt.subjects_from_manifest(manifest, align='rigid', cache_dir=cache)[0]
    stored = subject['images'].reader.transforms[moving][0].source
    assert max_distance(sitk.ReadTransform(str(stored)), rigid_truth()) < 0.2


def test_damaged_cached_transform_is_recomputed(pair, tmp_path):
    fixed, moving = pair
    cache = tmp_path / 'cache'
    pt.subjects_from_manifest({'s': {'images': [fixed, moving]}}, align='rigid', cache_dir=cache)
    (stored,) = (cache / 'alignment').iterdir()
    stored.write_text('not a transform')
    subject = pt.subjects_from_manifest({'s': {'images': [fixed, moving]}}, align='rigid', cache_dir=cache)[0]
    assert max_distance(sitk.ReadTransform(str(stored)), rigid_truth()) < 0.2
    assert subject['images'].reader.transforms[moving][0].source == stored


def test_in_memory_alignment_survives_dataloader_workers(pair):
    fixed, moving = pair
    subjects = pt.subjects_from_manifest({'a': {'images': [fixed, moving]}, 'b': {'images': [fixed, moving]}},
                                         align='rigid')
    expected = subjects[0]['images'].data.clone()
    loader = torch.utils.data.DataLoader(tio.SubjectsDataset(subjects), batch_size=1, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        torch.testing.assert_close(batch['images']['data'][0], expected)


def test_bad_align_value_and_failed_registration(pair, tmp_path):
    fixed, _ = pair
    with pytest.raises(ValueError, match='align'):
        pt.subjects_from_manifest({'s': {'images': [fixed]}}, align='elastic')
    far = synthetic.phantom(size=(8, 8, 8), origin=(500.0, 500.0, 500.0))
    far_path = write(far, tmp_path / 'far.nii.gz')
    with pytest.raises(pt.ManifestError) as info:
        pt.subjects_from_manifest({'subj-3': {'images': [fixed, far_path]}}, align='rigid')
    message = str(info.value)
    assert 'subj-3' in message and 'far.nii.gz' in message and 'rigid alignment' in message


def test_every_registration_setting_is_used_by_register():
    # SETTINGS is the alignment cache key: a number used by register but not in it, or in it
    # but not used, would let a changed setting reuse (or needlessly recompute) alignments.
    source = inspect.getsource(alignment.register)
    unused = [name for name in alignment.SETTINGS if name != 'version' and f"SETTINGS['{name}']" not in source]
    assert not unused, f'settings in the key but never read by register: {unused}'
    literals = re.findall(r'=\s*\d+(?:\.\d+)?(?:e-?\d+)?\s*[,)]', source.split('method = ', 1)[1])
    assert not literals, f'numbers hard-coded in register instead of SETTINGS: {literals}'
