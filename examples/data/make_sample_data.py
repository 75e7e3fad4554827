"""Write the synthetic images that ``sample_manifest.json`` lists (no image is committed).

Three subjects on different grids, each with a T1 and an oblique T2, label maps (values 0, 1, 2,
7) and 0 to 2 ROIs; ``sub-02`` also has a registration transform (a 2 mm shift). Run
``python examples/data/make_sample_data.py [FOLDER]``: without FOLDER the files go next to this
script (git ignores them); with FOLDER the manifest is copied there too.

Example:
    >>> manifest = make_sample_data('/tmp/sample')  # doctest: +SKIP
    >>> manifest.name
    'sample_manifest.json'
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import SimpleITK as sitk

from pyable_tio import read_manifest, synthetic

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / 'sample_manifest.json'

#: Per subject: T1 grid (size, spacing in x,y,z), T2 grid (size, spacing, rotation in degrees, axis).
SUBJECTS = {
    'sub-01': ((32, 28, 20), (1.0, 1.0, 1.5), (32, 28, 10), (1.0, 1.0, 3.0), 15.0, 'z'),
    'sub-02': ((28, 30, 18), (1.1, 1.0, 1.6), (28, 30, 9), (1.1, 1.0, 3.2), -10.0, 'z'),
    'sub-03': ((24, 24, 16), (1.2, 1.2, 2.0), (36, 36, 24), (0.8, 0.8, 1.3), 10.0, 'x'),
}


def make_sample_data(folder: str | Path | None = None) -> Path:
    """Write every file of ``sample_manifest.json`` into ``folder``; return the manifest there.

    Args:
        folder: Where to write (created if needed); defaults to this script's folder.

    Returns:
        The path of ``sample_manifest.json`` in ``folder``, whose relative paths now resolve.

    Example:
        >>> make_sample_data(tmp_folder)  # doctest: +SKIP
    """
    folder = Path(folder) if folder is not None else HERE
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, (size, spacing, t2_size, t2_spacing, degrees, axis)) in enumerate(SUBJECTS.items()):
        t1 = synthetic.phantom(size, spacing, seed=seed)
        direction = synthetic.oblique_direction(degrees, axis)
        t2 = synthetic.phantom(t2_size, t2_spacing, (-2.0, 1.5, 0.5), direction, seed=seed + 10)
        labels = synthetic.label_map(t1)
        files = {
            't1': t1,
            't2': t2,
            'labels': labels,
            'roi': sitk.Cast(labels > 0, sitk.sitkUInt8),
            'roi_core': sitk.Cast(labels == 7, sitk.sitkUInt8),
        }
        for key, image in files.items():
            sitk.WriteImage(image, str(folder / f'{name}_{key}.nii.gz'))
    sitk.WriteTransform(sitk.TranslationTransform(3, (2.0, -1.0, 0.0)), str(folder / 'sub-02_shift.tfm'))
    manifest = folder / MANIFEST.name
    if manifest.resolve() != MANIFEST:
        shutil.copyfile(MANIFEST, manifest)
    read_manifest(manifest)  # every listed file exists (raises ManifestError otherwise)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line: ``make_sample_data.py [FOLDER]``."""
    argv = sys.argv[1:] if argv is None else argv
    manifest = make_sample_data(argv[0] if argv else None)
    print(f'wrote {len(json.loads(manifest.read_text()))} subjects for {manifest}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
