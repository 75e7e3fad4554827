"""Registration outputs in a manifest: register once with SimpleITK, then load in one interpolation.

A synthetic "T1" (fixed) and a "T2" whose header was moved by a known rigid transform (the
scanner-space misalignment between two sequences) are written to a temporary folder. A short
SimpleITK registration finds the T2-to-T1 transform and writes it as a ``.tfm``; a manifest
lists it as the T2's own transform. pyable-tio then resamples the T2 onto the T1 grid through
that transform, in one interpolation. The same result without a transform file:
``subjects_from_manifest(..., align="rigid")``.
Run: ``python examples/example_registration_workflow.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import pyable_tio as pt
from pyable_tio import synthetic

SIZE = (40, 36, 32)


def make_pair(folder: Path) -> tuple[Path, Path]:
    """A fixed image and a copy whose voxels were moved in space by a known rigid transform."""
    fixed = synthetic.phantom(size=SIZE, spacing=(1.0, 1.0, 1.0), seed=1)
    fixed += sitk.GaussianSource(sitk.sitkFloat32, SIZE, sigma=(3.0, 4.0, 2.5), mean=(11.0, 22.0, 10.0), scale=60.0)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in SIZE])
    moved = sitk.Euler3DTransform(centre, 0.05, -0.04, 0.09, (2.0, -2.5, 1.5))
    moving = sitk.Image(fixed) * 0.7 + 15.0  # another contrast
    moving.CopyInformation(fixed)
    moving.SetDirection(moved.GetMatrix())
    moving.SetOrigin(moved.TransformPoint(fixed.GetOrigin()))
    sitk.WriteImage(fixed, str(folder / 't1.nii.gz'))
    sitk.WriteImage(moving, str(folder / 't2.nii.gz'))
    return folder / 't1.nii.gz', folder / 't2.nii.gz'


def register(fixed_path: Path, moving_path: Path) -> sitk.Transform:
    """Plain SimpleITK: Mattes mutual information, two levels, seeded sampling."""
    fixed = sitk.ReadImage(str(fixed_path), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(moving_path), sitk.sitkFloat32)
    transform = sitk.Euler3DTransform()
    transform.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, 7)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-5, 100)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    # ITK convention: maps fixed (T1) points to moving (T2) points, what the manifest expects.
    return transform


def correlation(subject) -> float:
    """Pearson correlation of the two channels where both are inside their field of view."""
    t1, t2 = subject['images'].data.numpy()
    inside = (t1 != 0) & (t2 != 0)
    return float(np.corrcoef(t1[inside], t2[inside])[0, 1])


def main() -> None:
    with tempfile.TemporaryDirectory(prefix='pyable-tio-registration-') as name:
        folder = Path(name)
        t1, t2 = make_pair(folder)
        sitk.WriteTransform(register(t1, t2), str(folder / 't2_to_t1.tfm'))
        manifest = {
            'before': {'images': ['t1.nii.gz', 't2.nii.gz']},
            'after': {'images': ['t1.nii.gz', {'path': 't2.nii.gz', 'transforms': ['t2_to_t1.tfm']}]},
        }
        (folder / 'manifest.json').write_text(json.dumps(manifest, indent=2))
        before, after = pt.subjects_from_manifest(folder / 'manifest.json')
        print('T2 on the T1 grid, correlation with T1:')
        print(f'  physical space only        {correlation(before):.3f}')
        print(f'  with t2_to_t1.tfm          {correlation(after):.3f}')
        for line in after['meta']['transforms_applied']:
            print(f'    applied: {line}')
        aligned = pt.subjects_from_manifest(folder / 'manifest.json', align='rigid', cache_dir=folder / 'cache')[0]
        print(f'  align="rigid" (no file)    {correlation(aligned):.3f}')
        print(f'    applied: {aligned["meta"]["transforms_applied"][0]}')


if __name__ == '__main__':
    main()
