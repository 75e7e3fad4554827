"""Names and defaults shared by every module of pyable-tio."""

from __future__ import annotations

#: Subject key of the stacked multi-channel image (``stack_channels=True``).
IMAGES = 'images'
#: Prefixes of per-entry keys: ``image_0``, ``roi_0``, ``labelmap_0``, ...
IMAGE_PREFIX = 'image_'
ROI_PREFIX = 'roi_'
LABELMAP_PREFIX = 'labelmap_'
#: Subject keys for the identifier and the geometry/provenance dictionary.
ID = 'id'
META = 'meta'

#: Manifest field names (JSON/dict keys and single-CSV columns).
FIELD_IMAGES = 'images'
FIELD_ROIS = 'rois'
FIELD_LABELMAPS = 'labelmaps'
FIELD_REFERENCE = 'reference'
FIELD_REFERENCE_SPACE = 'reference_space'
FIELD_TRANSFORMS = 'transforms'
CSV_LIST_COLUMNS = {
    'image_paths': FIELD_IMAGES,
    'roi_paths': FIELD_ROIS,
    'labelmap_paths': FIELD_LABELMAPS,
    'transforms': FIELD_TRANSFORMS,
}

#: Reference selectors understood by name.
REFERENCE_FIRST = 'first'
REFERENCE_LARGEST = 'largest'

#: Interpolator names accepted everywhere (mapped to SimpleITK in ``backend``).
LINEAR = 'linear'
NEAREST = 'nearest'
BSPLINE = 'bspline'
INTERPOLATORS = (LINEAR, NEAREST, BSPLINE, 'gaussian', 'lanczos')

#: Value given to voxels of the reference grid outside a file's field of view.
DEFAULT_BACKGROUND = 0.0

#: Tolerance used to decide that two grids are the same (mm and direction cosines).
GRID_TOLERANCE = 1e-5

#: Version of the on-disk cache layout; bump when the stored format changes.
CACHE_FORMAT_VERSION = 1
