"""The private TorchIO (and torch) members pyable-tio relies on, named in one place.

``PatchQueue`` overrides ``tio.Queue``'s hooks; patch cutting and per-patch augmentation call
TorchIO's own helpers so that their results are TorchIO's. These are not public API, so
pyproject.toml pins TorchIO's minor version (``torchio>=1.2.1,<1.3``) and
``tests/test_torchio_private.py`` fails, naming the member, when an upgrade removes one.
"""

from __future__ import annotations

import importlib

#: (module, dotted attribute, where pyable-tio uses it).
CLASS_MEMBERS: tuple[tuple[str, str, str], ...] = (
    ('torchio.data.sampler.uniform', 'UniformSampler._generate_patches', 'patching.cutting: lazy samplers'),
    ('torchio.data.sampler.weighted', 'WeightedSampler._generate_patches', 'patching.cutting: lazy samplers'),
    ('torchio.data.io', 'check_uint_to_int', 'patching.volume: patch dtype as TorchIO reads it'),
    ('torchio.data.io', 'nib_to_sitk', 'patching.stats: B-spline domain and border means as TorchIO builds them'),
    ('torchio.constants', 'MIN_FLOAT_32', 'patching.cutting: weighted sampler draw'),
    ('torchio', 'Transform._add_transform_to_subject_history', 'patching.cutting: patch history; transforms.layout overrides it'),
    ('torchio', 'Affine._get_scaling_transform', 'patching.ops.spatial: TorchIO affine about the patch centre'),
    ('torchio', 'Affine._get_rotation_transform', 'patching.ops.spatial: TorchIO affine about the patch centre'),
    ('torchio.transforms.augmentation.spatial.random_elastic_deformation', 'SPLINE_ORDER', 'patching.ops.spatial: B-spline'),
    ('torchio.transforms.augmentation.spatial.random_affine', 'get_borders_mean', 'patching.stats: pad values'),
    ('torchio', 'Queue._get_subjects_iterable', 'patches: PatchQueue hook'),
    ('torchio', 'Queue._fill', 'patches: PatchQueue hook'),
    ('torchio', 'Queue._get_next_subject', 'patches: PatchQueue'),
    ('torchio', 'Queue._shuffle_patches_list', 'patches: PatchQueue'),
    ('torchio', 'Queue._print', 'patches: PatchQueue'),
    ('torchio', 'Queue._get_first_item', 'patches: PatchQueue'),
    ('torchio', 'Queue._initialize_subjects_iterable', 'transforms.seeding: reset_queue'),
    ('torchio', 'SubjectsLoader._collate', 'patching.batch: batches as tio.SubjectsLoader collates them'),
    ('torch', 'UntypedStorage._new_shared', 'patching.volume: shared-memory patches (optional)'),
    ('torchio', 'Transform._get_base_args', 'transforms.layout, planar, spatial: steps built by a step keep its arguments'),
    ('torchio', 'GridAggregator._get_hann_window', 'inference.grid: SubjectGridAggregator, hann overlap weights'),
    ('torch.utils.data._utils.collate', 'default_collate_fn_map', 'datasets.monai: registers the collate of SubjectMeta'),
)
#: Attributes set on instances: (what to build, attribute, where pyable-tio uses it).
INSTANCE_MEMBERS: tuple[tuple[str, str, str], ...] = (
    ('image', '_loaded', 'patching.volume, patching.stats: is the image in memory'),
    ('dataset', '_transform', 'patching.cutting: the dataset transform to plan'),
    ('dataset', 'load_getitem', 'patching.cutting: lazy reading allowed'),
    ('queue', 'patches_list', 'patches, transforms.seeding'),
    ('queue', '_num_sampled_subjects', 'patches: PatchQueue._fill'),
    ('queue', '_incomplete_subject', 'transforms.seeding: reset_queue'),
    ('queue', '_num_patches_incomplete', 'transforms.seeding: reset_queue'),
    ('queue', '_subjects_iterable', 'transforms.seeding: reset_queue'),
)


def missing_members() -> list[str]:
    """Each private member that the installed TorchIO/torch no longer has, with where it is used.

    Example:
        >>> missing_members()
        []
    """
    import torch
    import torchio as tio

    missing = []
    for module_name, dotted, where in CLASS_MEMBERS:
        owner = importlib.import_module(module_name)
        for part in dotted.split('.'):
            owner = getattr(owner, part, None)
            if owner is None:
                missing.append(f'{module_name}.{dotted} (used by {where})')
                break
    image = tio.ScalarImage(tensor=torch.zeros(1, 2, 2, 2))
    dataset = tio.SubjectsDataset([tio.Subject(image=image)])
    queue = tio.Queue(dataset, 1, 1, tio.UniformSampler(1), num_workers=0, start_background=False)
    objects = {'image': image, 'dataset': dataset, 'queue': queue}
    for kind, attribute, where in INSTANCE_MEMBERS:
        if not hasattr(objects[kind], attribute):
            missing.append(f'{type(objects[kind]).__name__}().{attribute} (used by {where})')
    return missing
