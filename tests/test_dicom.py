"""DICOM folders as manifest entries: one series, several series, headers, cache (issue 16, item 6)."""

from __future__ import annotations

import json
import locale
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import pyable_tio as pt
from pyable_tio.cli import main as cli
from pyable_tio.io import dicom
from pyable_tio.cache import VolumeCache
from pyable_tio.errors import LoadError, ManifestError

T1_UID = '1.2.826.0.1.3680043.2.1125.1.1'
T2_UID = '1.2.826.0.1.3680043.2.1125.1.2'


def oblique_volume() -> sitk.Image:
    """A 7 x 6 x 5 (x,y,z) int16 volume, oblique, anisotropic, off-origin."""
    array = np.random.RandomState(0).randint(0, 1000, (5, 6, 7)).astype(np.int16)
    volume = sitk.GetImageFromArray(array)
    volume.SetSpacing((0.8, 0.9, 2.5))
    volume.SetOrigin((10.0, -20.0, 30.0))
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.2, 0.1, 0.3)
    volume.SetDirection(rotation.GetMatrix())
    return volume


def write_series(volume: sitk.Image, folder: Path, uid: str, description: str) -> None:
    """One file per slice with the tags ITK's series reader places slices by."""
    # GDCM's writer resets the process locale to "C" when it formats positions (SimpleITK
    # 2.5.7): Python's default text encoding would become ASCII for every later test.
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_slices(volume, folder, uid, description)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(volume: sitk.Image, folder: Path, uid: str, description: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = volume.GetDirection()
    spacing = volume.GetSpacing()
    for k in range(volume.GetDepth()):
        slice_ = volume[:, :, k]
        tags = {
            '0008|0060': 'MR',
            '0008|103e': description,
            '0020|000d': '1.2.826.0.1.3680043.2.1125.1',
            '0020|000e': uid,
            '0008|0018': f'{uid}.{k + 1}',
            '0020|0013': str(k + 1),
            '0020|0032': '\\'.join(f'{v:.6f}' for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
            '0020|0037': '\\'.join(f'{v:.9f}' for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            '0028|0030': f'{spacing[1]:.6f}\\{spacing[0]:.6f}',  # row spacing (y), column spacing (x)
            '0018|0050': f'{spacing[2]:.6f}',
        }
        for key, value in tags.items():
            slice_.SetMetaData(key, value)
        # Files named against the slice order: the reader must sort by position, not by name.
        writer.SetFileName(str(folder / f'{description}_{volume.GetDepth() - k:03d}.dcm'))
        writer.Execute(slice_)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """``one/``: a single T1 series; ``both/``: T1 and a flipped copy (T2) in one folder; ``t1.nii.gz``."""
    root = tmp_path_factory.mktemp('dicom')
    volume = oblique_volume()
    sitk.WriteImage(volume, str(root / 't1.nii.gz'))
    write_series(volume, root / 'one', T1_UID, 'T1 MPRAGE')
    write_series(volume, root / 'both', T1_UID, 'T1 MPRAGE')
    # Same voxels in space, stored with the x axis reversed: a different grid, the same image.
    flipped = sitk.Flip(volume, (True, False, False))
    write_series(sitk.Cast(flipped * 2, sitk.sitkInt16), root / 'both', T2_UID, 'T2 TSE')
    return root, volume


def world_values(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Values of ``image`` at physical points (nearest voxel)."""
    return np.array([image[image.TransformPhysicalPointToIndex(tuple(p))] for p in points])


def test_series_header_matches_the_full_read_and_the_volume(data):
    root, volume = data
    before = locale.setlocale(locale.LC_ALL)
    header = pt.geometry.reference.ImageHeader.read(root / 'one')
    full = dicom.read_series(root / 'one')
    assert locale.setlocale(locale.LC_ALL) == before  # reading leaves the process locale alone
    for got in (header.grid, pt.geometry.grid.Grid.from_image(full)):
        assert got.size == volume.GetSize() == (7, 6, 5)  # the slice count is the third size
        np.testing.assert_allclose(got.spacing, volume.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(got.origin, volume.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(got.direction, volume.GetDirection(), atol=1e-6)
    assert header.pixel_type == '16-bit signed integer' and header.components == 1
    flipped = pt.geometry.reference.ImageHeader.read(Path(f'{root / "both"}#{T2_UID}'))
    assert flipped.grid.matches(pt.geometry.grid.Grid.from_image(dicom.read_series(Path(f'{root / "both"}#{T2_UID}'))))


def test_a_single_series_folder_loads_in_physical_agreement_with_the_volume(data):
    root, volume = data
    manifest = {'s': {'images': [str(root / 't1.nii.gz'), str(root / 'one')]}}
    subject = pt.subjects_from_manifest(manifest)[0]
    images = subject['images'].data.numpy()
    np.testing.assert_array_equal(images[1], images[0])  # the series, on the NIfTI's grid
    # And physically: every voxel centre of the DICOM grid holds the volume's value there.
    series = dicom.read_series(root / 'one')
    index = np.stack(np.meshgrid(*[range(n) for n in series.GetSize()], indexing='ij'), -1).reshape(-1, 3)
    points = np.array([series.TransformIndexToPhysicalPoint(tuple(int(i) for i in idx)) for idx in index])
    np.testing.assert_array_equal(world_values(series, points), world_values(volume, points))


def test_several_series_need_a_choice_and_the_error_lists_them(data):
    root, _ = data
    with pytest.raises(ManifestError) as error:
        pt.subjects_from_manifest({'s': {'images': [str(root / 'both')]}})
    message = str(error.value)
    assert 'subject "s"' in message and 'holds 2 DICOM series' in message
    assert f'{T1_UID} "T1 MPRAGE" (5 files)' in message and f'{T2_UID} "T2 TSE" (5 files)' in message
    assert '"series"' in message
    with pytest.raises(ManifestError, match=f'has no DICOM series 1.2.3; it holds: {T1_UID}'):
        pt.subjects_from_manifest({'s': {'images': [{'path': str(root / 'both'), 'series': '1.2.3'}]}})


def test_the_chosen_series_is_read_both_spellings(data, tmp_path):
    root, volume = data
    both = root / 'both'
    manifest = {'s': {'images': [
        str(root / 't1.nii.gz'),
        {'path': str(both), 'series': T1_UID},
        {'path': str(both), 'series': T2_UID},  # two series of one folder: two channels
    ]}}
    images = pt.subjects_from_manifest(manifest)[0]['images'].data.numpy()
    np.testing.assert_array_equal(images[1], images[0])
    np.testing.assert_array_equal(images[2], 2 * images[0])  # flipped on disk, the same in space
    table = tmp_path / 'm.csv'
    table.write_text(f'id,image_paths\ns,{both}#{T2_UID}\n')
    csv_image = pt.subjects_from_manifest(table)[0]['images']
    assert str(csv_image.path) == f'{both}#{T2_UID}'
    alone = pt.subjects_from_manifest({'s': {'images': [{'path': str(both), 'series': T2_UID}]}})[0]['images']
    np.testing.assert_array_equal(csv_image.data.numpy(), alone.data.numpy())
    np.testing.assert_array_equal(csv_image.data.numpy()[0], sitk.GetArrayFromImage(dicom.read_series(f'{both}#{T2_UID}')))


def test_series_are_cached_apart_and_hit(data, tmp_path):
    root, _ = data
    both = root / 'both'
    cache = VolumeCache(tmp_path / 'cache')
    manifest = {'s': {'images': [{'path': str(both), 'series': T1_UID}],
                      'labelmaps': [{'path': str(both), 'series': T2_UID}]}}
    first = pt.subjects_from_manifest(manifest, cache_dir=cache, reference_space=pt.geometry.grid.Grid.from_image(oblique_volume()))
    first[0].load()
    assert cache.stats().entries == 2  # one per series, though both come from one folder
    again = pt.subjects_from_manifest(manifest, cache_dir=cache, reference_space=pt.geometry.grid.Grid.from_image(oblique_volume()))
    again[0].load()
    assert cache.counts['hits'] == 2
    np.testing.assert_array_equal(again[0]['labelmap_0'].data, first[0]['labelmap_0'].data)
    assert not np.array_equal(again[0]['images'].data.numpy(), again[0]['labelmap_0'].data.numpy())


def test_a_changed_slice_changes_the_key(data, tmp_path):
    root, volume = data
    folder = tmp_path / 'series'
    write_series(volume, folder, T1_UID, 'T1')
    cache = VolumeCache(tmp_path / 'cache')
    before = cache.source_digest(folder)
    victim = sorted(folder.iterdir())[2]
    os.utime(victim, ns=(0, 0))  # a rewrite: same bytes, other signature -> same digest
    assert cache.source_digest(folder) == before
    victim.write_bytes(victim.read_bytes()[:-2] + b'\x01\x00')
    assert cache.source_digest(folder) != before


def test_validate_and_load_errors_name_the_folder(data, tmp_path, capsys):
    root, _ = data
    manifest = tmp_path / 'm.json'
    manifest.write_text(json.dumps({'s': {'images': [str(root / 'both')]}, 'ok': {'images': [str(root / 'one')]}}))
    assert cli.main(['validate', str(manifest)]) == cli.EXIT_PROBLEMS
    err = capsys.readouterr().err
    assert f'subject "s": field "images": file {root / "both"}' in err and T2_UID in err
    grid = pt.geometry.grid.Grid.from_image(oblique_volume())
    reader = pt.reader.GridReader(grid, 'image', 'late')
    with pytest.raises(LoadError, match=r'subject "late": file .*both: folder .* holds 2 DICOM series'):
        reader(root / 'both')
