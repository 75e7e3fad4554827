"""Synthetic subjects written to disk: for the demo, the examples, tests and benchmarks.

Each subject has a smooth "T1" with a bright ellipsoid, a second, oblique and thick-slice "T2"
covering the same anatomy, an integer label map and a binary ROI, so every geometry path
(pass-through, oblique resampling, nearest-neighbour labels) is exercised.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: Label values of the synthetic label map (not contiguous on purpose).
LABEL_VALUES = (0, 1, 2, 7)


def phantom(
    size: Sequence[int] = (48, 40, 32),
    spacing: Sequence[float] = (1.0, 1.0, 1.5),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] | None = None,
    seed: int = 0,
    pixel_id: int = sitk.sitkFloat32,
) -> sitk.Image:
    """A smooth image with a bright ellipsoid, on the given grid (x,y,z order)."""
    rng = np.random.default_rng(seed)
    image = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in direction])
    points = _physical_points(image)
    centre = _centre(size, spacing, origin, image)
    radii = np.array([n * s for n, s in zip(size, spacing)][: len(size)]) * 0.3
    distance = np.sqrt((((points - centre) / radii) ** 2).sum(axis=-1))
    values = 100 * np.exp(-distance**2) + 20 * np.sin(points[..., 0] / 7.0) + rng.normal(0, 1, distance.shape)
    result = sitk.GetImageFromArray(values.astype(np.float32))
    result.CopyInformation(image)
    return sitk.Cast(result, pixel_id)


def label_map(image: sitk.Image, values: Sequence[int] = LABEL_VALUES) -> sitk.Image:
    """Concentric shells of ``values`` around the image centre (uint8)."""
    points = _physical_points(image)
    size, spacing = image.GetSize(), image.GetSpacing()
    centre = _centre(size, spacing, image.GetOrigin(), image)
    extent = min(n * s for n, s in zip(size, spacing))
    distance = np.sqrt(((points - centre) ** 2).sum(axis=-1)) / extent
    labels = np.zeros(distance.shape, np.uint8)
    for i, value in enumerate(values[1:]):
        labels[distance < 0.4 - 0.12 * i] = value
    result = sitk.GetImageFromArray(labels)
    result.CopyInformation(image)
    return result


def oblique_direction(degrees: float = 20.0, axis: str = 'z') -> tuple[float, ...]:
    """Row-major direction matrix rotated by ``degrees`` about one axis."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    matrices = {
        'z': [[c, -s, 0], [s, c, 0], [0, 0, 1]],
        'x': [[1, 0, 0], [0, c, -s], [0, s, c]],
        'y': [[c, 0, s], [0, 1, 0], [-s, 0, c]],
    }
    return tuple(np.asarray(matrices[axis], float).ravel())


def write_dataset(
    folder: str | os.PathLike,
    num_subjects: int = 4,
    size: Sequence[int] = (48, 40, 32),
    spacing: Sequence[float] = (1.0, 1.0, 1.5),
    second_image: bool = True,
    seed: int = 0,
) -> Path:
    """Write subjects and a relative-path ``manifest.json``; returns the manifest's path.

    Each subject: ``t1`` (reference, on ``size``/``spacing``), ``t2`` (oblique by 15 degrees,
    slices twice as thick, shifted origin), ``labels`` (values 0, 1, 2, 7 on the T1 grid) and a
    binary ``roi``, plus a class ``label`` and an ``age`` as extra fields.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for i in range(num_subjects):
        name = f'sub-{i:02d}'
        t1 = phantom(size, spacing, seed=seed + i)
        labels = label_map(t1)
        roi = sitk.Cast(labels > 0, sitk.sitkUInt8)
        files = {'t1': t1, 'labels': labels, 'roi': roi}
        if second_image:
            thick = (spacing[0], spacing[1], spacing[2] * 2)
            thin_size = (size[0], size[1], max(2, size[2] // 2))
            files['t2'] = phantom(thin_size, thick, (-3.0, 2.0, 1.0), oblique_direction(15.0), seed + 100 + i)
        for key, image in files.items():
            sitk.WriteImage(image, str(folder / f'{name}_{key}.nii.gz'))
        images = [f'{name}_t1.nii.gz'] + ([f'{name}_t2.nii.gz'] if second_image else [])
        manifest[name] = {
            'images': images,
            'rois': [f'{name}_roi.nii.gz'],
            'labelmaps': [f'{name}_labels.nii.gz'],
            'label': i % 2,
            'age': 40 + i,
        }
    path = folder / 'manifest.json'
    path.write_text(json.dumps(manifest, indent=2))
    return path


def _physical_points(image: sitk.Image) -> np.ndarray:
    """Physical (LPS) coordinates of every voxel, array-shaped (Z,Y,X, dim)."""
    size = image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing='ij'), axis=-1)[..., ::-1]
    matrix = np.asarray(image.GetDirection()).reshape(len(size), len(size)) * np.asarray(image.GetSpacing())
    return index @ matrix.T + np.asarray(image.GetOrigin())


def _centre(size, spacing, origin, image: sitk.Image) -> np.ndarray:
    middle = [(n - 1) / 2 for n in size]
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(middle))
