"""The subject plan: built once, carried by every copy of the subject, read by readers, cache and to_native."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.plan import PlanEntry, SubjectPlan, plan_of, reference_grid

from test_native import inside_reference_fov, write_case

OUTSIDE = 99


class ReplaceImages(tio.SpatialTransform):
    """A user's own transform that builds new image objects (no reader, no path), as adapters do.

    It keeps every voxel where it is and says so by being invertible (its inverse is itself).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.invert_transform = False
        self.args_names = []

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for key, image in subject.get_images_dict(intensity_only=False).items():
            subject[key] = type(image)(tensor=image.data.clone(), affine=image.affine.copy())
        return subject


def reference_image(image: tio.Image) -> sitk.Image:
    """An empty SimpleITK image on the grid where TorchIO's affine puts ``image`` (world coordinates)."""
    placed = image.as_sitk()
    empty = sitk.Image(placed.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(placed)
    return empty


@pytest.mark.parametrize('transform', [
    tio.Crop((2, 3, 4, 1, 3, 2)),
    tio.CropOrPad((20, 40, 24)),
    tio.Compose([tio.Crop((1, 2, 0, 3, 2, 1)), ReplaceImages()]),
], ids=['Crop', 'CropOrPad', 'new-images'])
def test_to_native_after_a_transform_lands_on_the_source_grid(tmp_path, transform):
    subject, reference, labels, rigid = write_case(tmp_path, True, True)
    transformed = transform(subject)
    if isinstance(transform, tio.Compose):
        assert transformed['labelmap_0'].reader is not subject['labelmap_0'].reader
        assert transformed['labelmap_0'].path is None  # nothing left on the image to find the file by
    prediction = transformed['labelmap_0']
    native = pt.to_native(prediction.data, transformed, target='labelmap_0', default_value=OUTSIDE)
    # On the label file's own grid, whatever happened to the subject's images.
    assert pt.geometry.grid.Grid.from_image(native).matches(pt.geometry.grid.Grid.from_image(labels), tolerance=0)
    back, original = sitk.GetArrayFromImage(native), sitk.GetArrayFromImage(labels)
    # World coordinates, through SimpleITK: native voxels whose point, through the file's
    # rigid transform, falls inside both the subject grid and what the transform kept.
    in_grid, _ = inside_reference_fov(labels, reference, rigid)
    in_kept, out_kept = inside_reference_fov(labels, reference_image(prediction), rigid)
    inside = in_grid & in_kept
    assert inside.sum() > 0.2 * inside.size
    assert set(np.unique(original[inside])) == set(synthetic.LABEL_VALUES)
    np.testing.assert_array_equal(back[inside], original[inside])
    # What the crop cut away comes back as the inverse's padding (0), or lies outside the grid.
    assert out_kept.sum() > 0 and set(np.unique(back[out_kept])) <= {0, OUTSIDE}
    # The same as SimpleITK resampling the prediction, placed by its affine, through T^-1.
    placed = prediction.as_sitk()
    expected = sitk.Resample(placed, labels, rigid.GetInverse(), sitk.sitkNearestNeighbor, OUTSIDE, placed.GetPixelID())
    np.testing.assert_array_equal(back[inside], sitk.GetArrayFromImage(expected)[inside])


def test_the_plan_travels_with_every_copy(tmp_path):
    subject, _, _, _ = write_case(tmp_path, True, True)
    plan = plan_of(subject)
    assert isinstance(plan, SubjectPlan) and subject.plan is plan
    entry = plan.entry_of_key('labelmap_0')
    assert entry.role == 'labelmap' and entry.source.name == 'labels.nii.gz'
    assert [t.source.name for t in entry.transforms] == ['rigid.tfm']
    # The readers hold the plan's own entries: one state, not two.
    assert subject['labelmap_0'].reader.entries == plan.entries_of('labelmap_0')
    for copied in (copy.deepcopy(subject), pickle.loads(pickle.dumps(subject)), tio.Crop(1)(subject),
                   tio.SubjectsDataset([subject])[0]):
        assert plan_of(copied) == plan
    assert len(pickle.dumps(plan)) < 4000  # small: ids, a grid and paths, never voxels
    # meta is made from the plan, not the other way round.
    assert subject['meta']['source_paths'] == plan.source_paths()
    assert reference_grid(subject) is plan.grid
    batch = next(iter(tio.SubjectsLoader(tio.SubjectsDataset([subject, subject]), batch_size=2)))
    assert '_pyable_plan' not in batch and batch['labelmap_0'][tio.DATA].shape[0] == 2


def test_plan_entries_follow_the_subject_keys(tmp_path):
    subject, _, _, _ = write_case(tmp_path, True, False)
    manifest = {'a': {'images': [subject['meta']['source_paths']['images'][0]] * 2,
                      'labelmaps': subject['meta']['source_paths']['labelmaps']},
                'b': {'images': [subject['meta']['source_paths']['images'][0]] * 2}}
    first, second = pt.subjects_from_manifest(manifest, missing='empty', stack_channels=False)
    assert plan_of(first).keys() == ['image_0', 'image_1', 'labelmap_0']
    filler = plan_of(second).entry_of_key('labelmap_0')
    assert filler.filler and isinstance(second['labelmap_0'].reader, pt.subjects.EmptyLabelReader)
    assert plan_of(second).source_paths()['labelmaps'] == []
    assert plan_of(first).entry_of_field('labelmaps', 0).key == 'labelmap_0'


def test_cache_is_given_data_and_a_function(tmp_path):
    """The cache's whole interface: a plan entry, a grid and compute (it never sees a reader)."""
    subject, _, _, _ = write_case(tmp_path, True, True)
    plan = plan_of(subject)
    cache = pt.VolumeCache(tmp_path / 'cache')
    entry = plan.entry_of_key('labelmap_0')
    calls = []

    def compute():
        calls.append(1)
        return np.zeros((1, *plan.grid.shape_zyx), np.int16)

    first = cache.compute_once(lambda: entry.cache_inputs(plan.grid, cache.source_digest), compute, entry.files())
    again = cache.compute_once(lambda: entry.cache_inputs(plan.grid, cache.source_digest), compute, entry.files())
    assert len(calls) == 1 and np.array_equal(first, again)
    other = PlanEntry(entry.key, entry.field, entry.index, entry.role, entry.source)  # no transform
    assert other.cache_inputs(plan.grid) != entry.cache_inputs(plan.grid)
    assert torch.equal(subject['labelmap_0'].data, pt.subjects_from_manifest(
        {'s': {'images': plan.source_paths()['images'], 'labelmaps': [
            {'path': str(entry.source), 'transforms': [str(entry.transforms[0].source)]}]}})[0]['labelmap_0'].data)


def test_nothing_reads_the_grid_back_from_meta(tmp_path):
    """meta is display data made from the plan: tampering with it changes no geometry."""
    from pyable_tio.datasets.pyable import subject_to_item

    subject, _, _, _ = write_case(tmp_path, True, True, oblique=False)
    direct = sitk.GetArrayFromImage(pt.to_native(subject['labelmap_0'].data, subject, target='labelmap_0'))
    plan = plan_of(subject)
    subject['meta'].update(size=(1, 2, 3), spacing=(9.0, 9.0, 9.0), direction=(0, 1, 0, 1, 0, 0, 0, 0, 1))
    subject.load()
    assert subject_to_item(subject)['meta']['size'] == plan.grid.size
    guarded = pt.transforms.ToZYX()(tio.ToCanonical()(subject))  # the Z,Y,X order comes from the plan's grid
    np.testing.assert_array_equal(guarded['labelmap_0'].affine, subject['labelmap_0'].affine)
    native = pt.to_native(guarded['labelmap_0'].data, guarded, target='labelmap_0')
    np.testing.assert_array_equal(sitk.GetArrayFromImage(native), direct)
