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
#: Attribute of a subject holding its ``pyable_tio.plan.SubjectPlan`` (not a key: never collated).
PLAN_ATTRIBUTE = '_pyable_plan'

#: Manifest field names (JSON/dict keys and single-CSV columns).
FIELD_IMAGES = 'images'
FIELD_ROIS = 'rois'
FIELD_LABELMAPS = 'labelmaps'
FIELD_REFERENCE = 'reference'
FIELD_REFERENCE_SPACE = 'reference_space'
FIELD_TRANSFORMS = 'transforms'
#: Other names of the list fields, accepted in every format (JSON, dict, CSV): the single-CSV
#: column names of earlier versions. A row giving both names of one field is refused.
FIELD_ALIASES = {
    'image_paths': FIELD_IMAGES,
    'roi_paths': FIELD_ROIS,
    'labelmap_paths': FIELD_LABELMAPS,
}
CSV_LIST_COLUMNS = {
    'image_paths': FIELD_IMAGES,
    'roi_paths': FIELD_ROIS,
    'labelmap_paths': FIELD_LABELMAPS,
    'transforms': FIELD_TRANSFORMS,
}

#: ``missing=``: each subject keeps the ROIs/label maps it lists (as in TorchIO), every subject
#: must list the same numbers (batches need it), or missing ones are filled with all-zero maps.
MISSING_KEEP = 'keep'
MISSING_ERROR = 'error'
MISSING_EMPTY = 'empty'
MISSING_MODES = (MISSING_KEEP, MISSING_ERROR, MISSING_EMPTY)

#: ``on_error=`` of subjects_from_manifest: refuse the manifest when any subject has a problem
#: (default), or build the good subjects and warn with the list of the skipped ones.
ON_ERROR_RAISE = 'raise'
ON_ERROR_SKIP = 'skip'
ON_ERROR_MODES = (ON_ERROR_RAISE, ON_ERROR_SKIP)

#: Reference selectors understood by name.
REFERENCE_FIRST = 'first'
REFERENCE_LARGEST = 'largest'

#: Interpolator names accepted everywhere (mapped to SimpleITK in ``backend``).
LINEAR = 'linear'
NEAREST = 'nearest'
BSPLINE = 'bspline'
INTERPOLATORS = (LINEAR, NEAREST, BSPLINE, 'gaussian', 'lanczos')

#: Environment variable choosing the backend: ``auto`` (pyable when importable), ``pyable``
#: (required) or ``simpleitk`` (forced).
BACKEND_ENV_VAR = 'PYABLE_TIO_BACKEND'
BACKEND_AUTO = 'auto'
BACKEND_PYABLE = 'pyable'
BACKEND_SIMPLEITK = 'simpleitk'
BACKENDS = (BACKEND_AUTO, BACKEND_PYABLE, BACKEND_SIMPLEITK)

#: Value given to voxels of the reference grid outside a file's field of view.
DEFAULT_BACKGROUND = 0.0

#: Tolerance used to decide that two grids are the same (mm and direction cosines).
GRID_TOLERANCE = 1e-5

#: Version of the on-disk cache layout; bump when the stored format changes.
CACHE_FORMAT_VERSION = 1
#: Version of what a cache key means; bump when the same inputs give another volume.
#: 2: transform lists compose as ``CompositeTransform(list)`` (the seed's order), not reversed.
#: 3: float ROIs/label maps holding whole numbers come out as the smallest integer type.
CACHE_KEY_VERSION = 3
#: File names inside a cache folder: ``<key[:2]>/<key>.npy`` + ``<key>.json``; temporaries
#: end in ``.tmp``; source-file digests live in ``sources/``.
CACHE_ARRAY_SUFFIX = '.npy'
CACHE_SIDECAR_SUFFIX = '.json'
CACHE_TEMP_SUFFIX = '.tmp'
CACHE_SOURCES_FOLDER = 'sources'
#: A result derived from files that change while it is computed is not stored; it is
#: computed again, at most this many times in all, before the load fails naming the file.
SOURCE_READ_TRIES = 3
#: Folders of small files (blobs) a cache keeps beside its entries, by owner (``alignment``:
#: the ``.tfm`` files of ``align=``), and of the lock files taken to compute something once.
CACHE_BLOB_FOLDERS = ('alignment',)
CACHE_LOCKS_FOLDER = 'locks'

#: Keys of the items of ``PyableDataset`` (the seed's dict API) and of their batches.
ITEM_IMAGES = 'images'
ITEM_ROIS = 'rois'
ITEM_LABELMAPS = 'labelmaps'
#: Axis order of ``meta`` spacing/origin/direction/size (SimpleITK's x,y,z); ``meta['axis_order']``.
META_AXIS_ORDER = 'xyz'
#: Batch keys added by ``PadCollate``: valid-region mask, per-item (D, H, W), entry presence.
MASK = 'mask'
SPATIAL_SHAPES = 'spatial_shapes'
PRESENT_SUFFIX = '_present'
#: Values ``PadCollate`` pads images and ROIs/label maps with.
IMAGE_PAD_VALUE = 0.0
LABEL_PAD_VALUE = 0

#: ``align=`` modes of ``subjects_from_manifest`` and the cache sub-folder of their ``.tfm`` files.
ALIGN_RIGID = 'rigid'
ALIGN_AFFINE = 'affine'
ALIGN_MODES = (ALIGN_RIGID, ALIGN_AFFINE)
ALIGNMENT_FOLDER = 'alignment'

#: Overlap modes of grid inference (``inference_loader``), as in ``tio.GridAggregator``.
OVERLAP_MODES = ('crop', 'average', 'hann')
#: Value ``to_native`` gives to native voxels outside the subject grid's field of view.
NATIVE_DEFAULT_VALUE = 0.0

#: Largest deviation of |cos| from 1 accepted between an image axis and a Z,Y,X axis (layout guard).
LAYOUT_AXIS_TOLERANCE = 1e-3
#: World (RAS) axis normal to 2-D slices: 2-D grids are embedded at z = 0 (``Grid.as_3d``).
SLICE_NORMAL_AXIS = 2

#: ``nonfinite=`` policies for NaN/+-Inf voxels, applied to each file before interpolation:
#: keep them as stored, replace them by 0, or refuse the file (the default: a NaN voxel would
#: spread through interpolation and normalisation into a NaN loss, far from its cause).
NONFINITE_KEEP = 'keep'
NONFINITE_ZERO = 'zero'
NONFINITE_ERROR = 'error'
NONFINITE_MODES = (NONFINITE_KEEP, NONFINITE_ZERO, NONFINITE_ERROR)
DEFAULT_NONFINITE = NONFINITE_ERROR

#: Per-patch augmentation (pyable_tio.patching.augment): whole-volume statistics kept per process.
STATISTICS_MEMO_SIZE = 512
#: Version of the whole-volume statistics kept in the volume cache; bump when their formulas change.
STATISTICS_VERSION = 1
#: Engines resampling augmented patches: compiled kernels (numba) or SimpleITK (the oracle).
PATCH_ENGINES = ('numba', 'sitk')
PATCH_ENGINE_DEFAULT = 'numba'
#: Extra source voxels read around a patch's preimage, per interpolator: the interpolation
#: support (linear and nearest reach 1 voxel, B-spline / windowed sinc further) plus rounding.
INTERPOLATION_SUPPORT = {'nearest': 1, 'linear': 2}
INTERPOLATION_SUPPORT_DEFAULT = 4
#: ``truncate`` of scipy.ndimage.gaussian_filter (TorchIO's RandomBlur): kernel radius in stds.
BLUR_TRUNCATE = 4.0
#: Names of the built-in preprocessing steps (``pyable_tio.preprocess.STEPS``'s keys, sorted),
#: here so that the command line's help lists them without importing the steps.
PREPROCESS_STEP_NAMES = ('n4', 'skullstrip')
#: Manifest field (subject or file) listing preprocessing steps, e.g. ``["n4", "skullstrip"]``.
FIELD_PREPROCESS = 'preprocess'
#: Name of the brain mask a skull-strip step makes, and the subject key of it on the grid.
BRAIN_MASK = 'brain'
BRAIN_MASK_KEY = 'roi_brain'
#: Output of a file's preprocessing steps that is the processed image itself.
PREPROCESS_IMAGE = 'image'
#: Cache sub-folder of the lock files that make one process compute a file's steps at a time.


#: Most bytes one compressed byte of a deflate stream can expand to (zlib's documented limit,
#: 1032:1), plus slack for the gzip header and trailer: a ``.nii.gz`` whose header declares more
#: voxel bytes than its compressed size allows is truncated or crafted (a gzip bomb), refused
#: before anything is allocated.
DEFLATE_MAX_RATIO = 1032
DEFLATE_SLACK_BYTES = 1 << 16

#: ``pyable-tio cache`` without ``--workers``: fewer volumes than this are filled in the command's
#: own process; worker processes (each starts in seconds: torch, TorchIO, SimpleITK) pay off
#: only over more volumes (a 12-volume manifest filled 2x faster with 0 workers than with 2).
CACHE_WORKERS_MIN_VOLUMES = 32
CACHE_WORKERS_MAX = 4

#: Exit codes of the ``pyable-tio`` command: success, problems found, bad command line,
#: interrupted (Ctrl-C), terminated (SIGTERM).
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

#: Label maps and ROIs off their image (wrong header, another subject's file, outside the field
#: of view). Fields of view: the share of the smaller of the two (the file's, the reference
#: grid's) inside the other; below this the file is refused when subjects are planned (headers
#: only). Relative to the smaller one, so that a slab reference inside a whole-head label map,
#: or a small ROI file inside the image, passes.
LABEL_EXTENT_MIN_OVERLAP = 0.5
#: Share of a label map's foreground (non-zero voxels) falling outside the reference grid,
#: measured when its voxels are read (``validate``, the reader): above the first a warning
#: (a validate note; a slab reference may crop a whole-brain label map on purpose), above the
#: second an error (the map would come out (almost) empty and teach "background").
LABEL_FOREGROUND_LOST_WARN = 0.5
LABEL_FOREGROUND_LOST_ERROR = 0.95
#: Foreground voxels looked at for that share (an evenly strided sample beyond this: the share
#: is then known to about 1 %, plenty for thresholds of 50 % and 95 %).
LABEL_FOREGROUND_SAMPLES = 20_000
#: More distinct values than this in a label map is implausible (a uint8 probability map has
#: up to 256; FreeSurfer's aparc.a2009s+aseg, among the largest common atlases, about 190):
#: a warning (:class:`pyable_tio.errors.LabelValuesWarning`) and a validate note.
LABEL_MAX_DISTINCT_VALUES = 200
#: Voxels looked at (evenly strided) to count a label map's distinct values when it is read.
LABEL_VALUES_SAMPLES = 2_000_000
#: DICOM series: slice positions (along the slice normal) more than this share of the usual
#: distance away from evenly spaced are refused (a missing or extra slice): ITK would stack the
#: slices evenly at the average distance, misplacing them.
DICOM_SLICE_GAP_TOLERANCE = 0.1
#: Attribute by which a seed-style callable declares that it changes label values on purpose
#: (relabelling, merging classes): its new values pass the "labels must not be interpolated"
#: check (``pyable_tio.transforms.changes_labels`` sets it).
CHANGES_LABELS_ATTRIBUTE = 'changes_labels'

# ----------------------------------------------------------------- QA sheet (pyable_tio.qa)
#: A finding whose badness (its value measured against its threshold) reaches 1 crosses the
#: threshold; the sheet sorts subjects by their worst badness.
QA_CROSSED = 1.0
#: Badness of a notice (oblique file, anisotropic spacing): below every crossed threshold,
#: above a clean subject.
QA_NOTICE = 0.5
#: Largest shift (mm) of a channel against the reference channel that passes: the shift at
#: which their normalised mutual information peaks, searched up to QA_SHIFT_SEARCH_MM.
QA_MAX_CHANNEL_SHIFT_MM = 3.0
QA_SHIFT_SEARCH_MM = 20.0
#: Channels are compared on a grid of at most this many voxels per axis (block means).
QA_ALIGN_MAX_SIZE = 64
#: Histogram bins of the normalised mutual information (per channel).
QA_NMI_BINS = 32
#: Smallest share of a label map's/ROI's foreground inside the reference channel's foreground
#: (Otsu, dilated by QA_FOREGROUND_MARGIN_MM), and inside the reference grid (from its file).
QA_MIN_IN_FOREGROUND = 0.9
QA_MIN_IN_GRID = 0.95
QA_FOREGROUND_MARGIN_MM = 3.0
#: Spacing ratio (largest / smallest axis of a file) above which it is flagged.
QA_MAX_SPACING_RATIO = 3.0
#: Robust z-score (0.6745 (x - median) / MAD, Iglewicz & Hoaglin) of a channel's median or
#: spread (IQR) against the other subjects above which it is an outlier; needs QA_MIN_SUBJECTS_Z.
QA_MAX_ROBUST_Z = 3.5
QA_MIN_SUBJECTS_Z = 4
#: Thumbnail panel size in pixels (each channel: three panels side by side) and PNG colours.
QA_PANEL_PIXELS = 144
QA_PNG_COLOURS = 32
#: Intensity window of thumbnails: these percentiles of the channel map to black and white.
QA_WINDOW_PERCENTILES = (1.0, 99.5)
