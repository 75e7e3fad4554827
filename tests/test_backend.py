"""Backend seam: SimpleITK semantics, backend selection, and pyable == SimpleITK results.

The comparison tests run only where ``pyable.imaginable`` imports; they resample the same
inputs through both paths and require images within float tolerance and labels/ROIs exactly.
"""

from __future__ import annotations

import logging
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from pyable_tio import synthetic
from pyable_tio.io import backend
from pyable_tio.constants import BACKEND_ENV_VAR
from pyable_tio.geometry.grid import Grid
from pyable_tio.reader import GridReader
from pyable_tio.manifest.records import TransformEntry

LABELS = set(synthetic.LABEL_VALUES)


@pytest.fixture(autouse=True)
def auto_backend(monkeypatch):
    """Each test starts in ``auto`` mode and leaves no cached import decision behind."""
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    backend._import_pyable.cache_clear()
    yield
    backend._import_pyable.cache_clear()


@pytest.fixture
def isolated_pyable():
    """Hide any imported pyable modules during the test and restore them afterwards."""
    saved = {name: module for name, module in sys.modules.items() if _is_pyable(name)}
    for name in saved:
        del sys.modules[name]
    yield
    for name in [name for name in sys.modules if _is_pyable(name)]:
        del sys.modules[name]
    sys.modules.update(saved)


def _is_pyable(name: str) -> bool:
    return name == 'pyable' or name.startswith('pyable.')


# ---------------------------------------------------------------- inputs


def source_image(size=(20, 18, 12), seed=3) -> sitk.Image:
    """Oblique about two axes, anisotropic, off origin."""
    rotation = np.asarray(synthetic.oblique_direction(25.0, 'z')).reshape(3, 3)
    rotation = rotation @ np.asarray(synthetic.oblique_direction(10.0, 'x')).reshape(3, 3)
    return synthetic.phantom(
        size=size, spacing=(1.3, 1.1, 2.5), origin=(-3.0, 2.0, -4.0), direction=tuple(rotation.ravel()), seed=seed
    )


def target_grid(size=(22, 20, 14), origin=(-6.0, -4.0, -8.0)) -> Grid:
    """Differently oblique and anisotropic; its corners reach outside the source."""
    direction = synthetic.oblique_direction(-15.0, 'y')
    return Grid(size=size, spacing=(1.2, 1.45, 1.9), origin=origin, direction=direction)


def roi_of(labels: sitk.Image) -> sitk.Image:
    return sitk.Cast(labels > 0, sitk.sitkUInt8)


def rigid() -> sitk.Transform:
    return sitk.Euler3DTransform((2.0, 3.0, 1.0), 0.12, -0.08, 0.2, (1.5, -2.0, 0.7))


def affine() -> sitk.Transform:
    transform = sitk.AffineTransform(3)
    transform.SetMatrix((1.08, 0.05, 0.0, -0.04, 0.93, 0.06, 0.02, 0.0, 1.1))
    transform.SetTranslation((-1.0, 0.5, 2.0))
    transform.SetCenter((5.0, 5.0, 5.0))
    return transform


def composite() -> sitk.Transform:
    return sitk.CompositeTransform([rigid(), affine()])


def displacement(grid: Grid) -> sitk.Transform:
    """A smooth, non-linear displacement field covering the target grid."""
    points = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape_zyx], indexing='ij'), axis=-1)
    field = np.stack(
        [2.0 * np.sin(points[..., 0] / 3.0), 1.5 * np.cos(points[..., 2] / 4.0), 1.0 * np.sin(points[..., 1] / 5.0)],
        axis=-1,
    )
    image = sitk.GetImageFromArray(field.astype(np.float64), isVector=True)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return sitk.DisplacementFieldTransform(image)


TRANSFORMS = {
    'identity': lambda grid: None,
    'rigid': lambda grid: rigid(),
    'affine': lambda grid: affine(),
    'composite': lambda grid: composite(),
    'displacement': displacement,
}


def through(monkeypatch, name: str, function, *args, **kwargs):
    """Run ``function`` with ``PYABLE_TIO_BACKEND=name`` and check that backend was used."""
    monkeypatch.setenv(BACKEND_ENV_VAR, name)
    assert backend.active_backend() == name
    return function(*args, **kwargs)


def assert_on_grid(image: sitk.Image, grid: Grid) -> None:
    assert Grid.from_image(image).matches(grid)


# ---------------------------------------------------------------- always run: selection


def test_env_var_forces_simpleitk(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, 'SimpleITK')
    assert backend.active_backend() == 'simpleitk'
    assert backend.pyable_available() is False


def test_unknown_env_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, 'itk')
    with pytest.raises(ValueError, match=f'{BACKEND_ENV_VAR}.*itk'):
        backend.active_backend()


def test_failed_import_falls_back_once_with_debug_log(monkeypatch, caplog, tmp_path):
    monkeypatch.setitem(sys.modules, 'pyable.imaginable', None)  # import raises ImportError
    caplog.set_level(logging.DEBUG, logger=backend.__name__)
    assert backend.active_backend() == 'simpleitk'
    assert backend.pyable_available() is False
    path = str(tmp_path / 'labels.nii.gz')
    sitk.WriteImage(synthetic.label_map(source_image()), path)
    labels = backend.load(path, backend.ROLE_LABELMAP)
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) == LABELS
    messages = [record.getMessage() for record in caplog.records if 'pyable is not usable' in record.getMessage()]
    assert len(messages) == 1 and 'SimpleITK' in messages[0]


def test_required_pyable_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pyable.imaginable', None)
    monkeypatch.setenv(BACKEND_ENV_VAR, 'pyable')
    with pytest.raises(ImportError, match=f'{BACKEND_ENV_VAR}=pyable.*pip install'):
        backend.active_backend()
    with pytest.raises(ImportError, match='pyable cannot be used'):
        backend.load('any.nii.gz', backend.ROLE_IMAGE)
    assert backend.pyable_available() is False


@pytest.mark.parametrize(
    'body, reason',
    [
        ("raise OSError('libvtk missing')", 'OSError: libvtk missing'),
        ('class SITKImaginable:\n    pass\nRoiable = LabelMapable = SITKImaginable', 'too old'),
    ],
    ids=['import-raises-oserror', 'pyable-without-v3-methods'],
)
def test_broken_or_old_pyable_falls_back(monkeypatch, tmp_path, isolated_pyable, body, reason):
    package = tmp_path / 'pyable'
    package.mkdir()
    (package / '__init__.py').write_text('')
    (package / 'imaginable.py').write_text(textwrap.dedent(body) + '\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert backend.active_backend() == 'simpleitk'
    assert reason in backend._import_pyable()[1]


# ---------------------------------------------------------------- always run: SimpleITK semantics


def test_simpleitk_path_labels_are_zero_outside_and_never_interpolated(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, 'simpleitk')
    labels = synthetic.label_map(source_image())
    grid = target_grid(size=(40, 36, 24), origin=(-25.0, -25.0, -30.0))
    result = backend.resample(labels, grid, backend.ROLE_LABELMAP, 'bspline', rigid(), default_value=0)
    array = sitk.GetArrayFromImage(result)
    assert_on_grid(result, grid)
    assert result.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(array)) == LABELS
    # The grid's first corner maps far outside the source: background, not a border label.
    assert array[0, 0, 0] == 0 and array[-1, -1, -1] == 0


def test_simpleitk_path_uses_transform_as_grid_to_image_map(monkeypatch):
    """A voxel of the output holds the source value at T(voxel centre) (ITK convention)."""
    monkeypatch.setenv(BACKEND_ENV_VAR, 'simpleitk')
    labels = synthetic.label_map(source_image())
    grid = target_grid()
    transform = rigid()
    result = backend.resample(labels, grid, backend.ROLE_LABELMAP, transform=transform)
    array = sitk.GetArrayFromImage(result)
    checked = 0
    for index in [(3, 4, 5), (10, 9, 7), (12, 11, 6), (15, 8, 9)]:
        point = transform.TransformPoint(result.TransformIndexToPhysicalPoint(index))
        continuous = labels.TransformPhysicalPointToContinuousIndex(point)
        nearest = [int(round(c)) for c in continuous]
        if all(0 <= n < s for n, s in zip(nearest, labels.GetSize())):
            assert array[index[::-1]] == labels[nearest]
            checked += 1
    assert checked >= 3


def test_load_keeps_label_values_and_makes_images_float32(tmp_path):
    image_path, label_path = str(tmp_path / 'image.nii.gz'), str(tmp_path / 'labels.nii.gz')
    sitk.WriteImage(sitk.Cast(source_image(), sitk.sitkInt16), image_path)
    sitk.WriteImage(synthetic.label_map(source_image()), label_path)
    image = backend.load(tmp_path / 'image.nii.gz', backend.ROLE_IMAGE)  # a Path works
    roi = backend.load(label_path, backend.ROLE_ROI)
    assert image.GetPixelID() == sitk.sitkFloat32
    # ROIs are not binarised by the backend (the reader and the user decide).
    assert set(np.unique(sitk.GetArrayViewFromImage(roi))) == LABELS
    with pytest.raises(RuntimeError, match='does not exist'):
        backend.load(tmp_path / 'missing.nii.gz', backend.ROLE_IMAGE)
    with pytest.raises(ValueError, match='role'):
        backend.load(label_path, 'mask')


# ---------------------------------------------------------------- pyable == SimpleITK


@pytest.fixture
def pyable_module():
    return pytest.importorskip('pyable.imaginable', reason='pyable is not importable: comparison tests skipped')


def compare(monkeypatch, image, grid, role, interpolator='linear', transform=None, default_value=0.0):
    """Resample through both backends; assert same grid, pixel type and values."""
    expected = through(monkeypatch, 'simpleitk', backend.resample, image, grid, role, interpolator, transform, default_value)
    actual = through(monkeypatch, 'pyable', backend.resample, image, grid, role, interpolator, transform, default_value)
    assert_on_grid(expected, grid)
    assert_on_grid(actual, grid)
    assert actual.GetPixelID() == expected.GetPixelID()
    a, e = sitk.GetArrayFromImage(actual), sitk.GetArrayFromImage(expected)
    if role == backend.ROLE_IMAGE:
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-5 * max(1.0, float(np.abs(e).max())))
    else:
        np.testing.assert_array_equal(a, e)
    return e


@pytest.mark.parametrize('transform_name', list(TRANSFORMS))
@pytest.mark.parametrize('role', backend.ROLES)
def test_pyable_matches_simpleitk(monkeypatch, pyable_module, role, transform_name):
    image = source_image()
    if role == backend.ROLE_LABELMAP:
        image = synthetic.label_map(image)
    elif role == backend.ROLE_ROI:
        image = roi_of(synthetic.label_map(image))
    grid = target_grid()
    expected = compare(monkeypatch, image, grid, role, 'linear', TRANSFORMS[transform_name](grid))
    # Non-trivial: the result has the source's content and background outside its field of view.
    if role == backend.ROLE_LABELMAP:
        assert set(np.unique(expected)) == LABELS
    elif role == backend.ROLE_ROI:
        assert set(np.unique(expected)) == {0, 1}
    else:
        assert (expected == 0).any() and expected.max() > 50


@pytest.mark.parametrize('interpolator', ['nearest', 'bspline', 'gaussian', 'lanczos'])
@pytest.mark.parametrize('transform_name', ['identity', 'affine'])
def test_pyable_matches_simpleitk_for_every_interpolator(monkeypatch, pyable_module, interpolator, transform_name):
    """lanczos is unknown to pyable's applyTransform (it would silently become linear)."""
    grid = target_grid()
    compare(monkeypatch, source_image(), grid, backend.ROLE_IMAGE, interpolator, TRANSFORMS[transform_name](grid))


def test_pyable_matches_simpleitk_for_vector_images(monkeypatch, pyable_module):
    """Multi-component images (e.g. a 2-channel file) take the same path as scalar ones."""
    first, second = source_image(seed=1), source_image(seed=2)
    vector = sitk.Compose(first, second)
    grid = target_grid()
    for transform in (None, composite()):
        result = compare(monkeypatch, vector, grid, backend.ROLE_IMAGE, 'linear', transform)
        assert result.shape == (*grid.shape_zyx, 2)


def test_pyable_outside_fov_uses_default_value_not_border_labels(monkeypatch, pyable_module):
    """pyable's label classes extrapolate the border label by default; the seam turns it off."""
    grid = target_grid(size=(40, 36, 24), origin=(-25.0, -25.0, -30.0))
    labels = synthetic.label_map(source_image())
    for transform in (None, rigid()):
        result = compare(monkeypatch, labels, grid, backend.ROLE_LABELMAP, transform=transform)
        assert result[0, 0, 0] == 0 and (result == 0).mean() > 0.5
        compare(monkeypatch, roi_of(labels), grid, backend.ROLE_ROI, transform=transform)
        image = compare(monkeypatch, source_image(), grid, backend.ROLE_IMAGE, transform=transform, default_value=-7.0)
        assert image[0, 0, 0] == -7.0


def test_pyable_keeps_semantics_applytransform_would_change(monkeypatch, pyable_module):
    """Integer pixels: applyTransform forces nearest and a 0 fill; the seam must not."""
    grid = target_grid()
    integer_image = sitk.Cast(source_image(), sitk.sitkUInt16)
    result = compare(monkeypatch, integer_image, grid, backend.ROLE_IMAGE, 'linear', affine(), default_value=5.0)
    assert (result == 5).any()
    labels = synthetic.label_map(source_image())
    result = compare(monkeypatch, labels, grid, backend.ROLE_LABELMAP, transform=rigid(), default_value=3.0)
    assert (result == 3).any()
    float_labels = sitk.Cast(labels, sitk.sitkFloat32)  # label maps stored as float keep nearest
    result = compare(monkeypatch, float_labels, grid, backend.ROLE_LABELMAP, transform=composite())
    assert set(np.unique(result)) == LABELS


def test_pyable_without_explicit_resampler_still_matches(monkeypatch, pyable_module):
    """If a pyable lacks transformFromRegitration, those few cases go through SimpleITK."""
    monkeypatch.delattr(pyable_module.Imaginable, 'transformFromRegitration')
    assert backend.pyable_available()
    grid = target_grid()
    compare(monkeypatch, source_image(), grid, backend.ROLE_IMAGE, 'lanczos', affine())
    compare(monkeypatch, source_image(), grid, backend.ROLE_IMAGE, 'bspline', affine())


def test_pyable_matches_simpleitk_in_2d(monkeypatch, pyable_module):
    image = synthetic.phantom(size=(30, 26), spacing=(1.1, 0.9), origin=(0.0, 0.0), direction=(0.96, -0.28, 0.28, 0.96))
    labels = sitk.Cast(sitk.BinaryThreshold(image, 40.0, 1e9, 7, 0), sitk.sitkUInt8)
    grid = Grid(size=(24, 28), spacing=(1.4, 1.2), origin=(-3.0, 2.0), direction=(1.0, 0.0, 0.0, 1.0))
    transform = sitk.Euler2DTransform((10.0, 10.0), 0.2, (1.0, -2.0))
    for candidate in (None, transform):
        compare(monkeypatch, image, grid, backend.ROLE_IMAGE, 'bspline', candidate)
        result = compare(monkeypatch, labels, grid, backend.ROLE_LABELMAP, transform=candidate)
        assert set(np.unique(result)) == {0, 7}


def test_pyable_path_really_calls_pyable_with_safe_settings(monkeypatch, pyable_module):
    calls = []

    def spy(method_name):
        original = getattr(pyable_module.Imaginable, method_name)

        def wrapper(self, *args, **kwargs):
            calls.append((type(self).__name__, method_name, kwargs))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(pyable_module.Imaginable, method_name, wrapper)

    for method_name in ('resampleOnTargetImage', 'applyTransform', 'transformFromRegitration'):
        spy(method_name)
    monkeypatch.setenv(BACKEND_ENV_VAR, 'pyable')
    grid = target_grid()
    labels = synthetic.label_map(source_image())
    backend.resample(labels, grid, backend.ROLE_LABELMAP, 'linear')
    backend.resample(roi_of(labels), grid, backend.ROLE_ROI, 'linear', rigid())
    backend.resample(source_image(), grid, backend.ROLE_IMAGE, 'bspline', affine())
    backend.resample(source_image(), grid, backend.ROLE_IMAGE, 'lanczos', affine())
    assert [(name, method) for name, method, _ in calls] == [
        ('LabelMapable', 'resampleOnTargetImage'),
        ('Roiable', 'applyTransform'),
        ('SITKImaginable', 'applyTransform'),
        ('SITKImaginable', 'transformFromRegitration'),
    ]
    assert calls[0][2]['useNearestNeighborExtrapolator'] is False
    assert calls[0][2]['interpolator'] == sitk.sitkNearestNeighbor
    assert calls[1][2]['interpolator'] == 'nearest' and calls[2][2]['interpolator'] == 'bspline'
    assert calls[3][2]['useNearestNeighborExtrapolator'] is False


def test_pyable_load_matches_simpleitk_and_reports_missing_files(monkeypatch, pyable_module, tmp_path):
    image_path, label_path = tmp_path / 'image.nii.gz', tmp_path / 'labels.nii.gz'
    sitk.WriteImage(sitk.Cast(source_image(), sitk.sitkInt16), str(image_path))
    sitk.WriteImage(synthetic.label_map(source_image()), str(label_path))
    for path, role in ((image_path, backend.ROLE_IMAGE), (label_path, backend.ROLE_ROI), (label_path, backend.ROLE_LABELMAP)):
        expected = through(monkeypatch, 'simpleitk', backend.load, path, role)
        actual = through(monkeypatch, 'pyable', backend.load, path, role)  # a Path, not a str
        assert actual.GetPixelID() == expected.GetPixelID()
        assert Grid.from_image(actual).matches(Grid.from_image(expected))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(actual), sitk.GetArrayFromImage(expected))
    with pytest.raises(RuntimeError, match='does not exist'):
        backend.load(tmp_path / 'missing.nii.gz', backend.ROLE_LABELMAP)


def test_pyable_reader_end_to_end_matches_simpleitk(monkeypatch, pyable_module, tmp_path):
    """GridReader (load + composed transform files + resample) gives the same arrays."""
    path = str(tmp_path / 'labels.nii.gz')
    sitk.WriteImage(synthetic.label_map(source_image()), path)
    transform_path = tmp_path / 'rigid.tfm'
    sitk.WriteTransform(rigid(), str(transform_path))
    entries = (TransformEntry(transform_path, False), TransformEntry(affine(), True))
    reader = GridReader(target_grid(), backend.ROLE_LABELMAP, 'sub-01', transforms={path: entries})
    expected, affine_expected = through(monkeypatch, 'simpleitk', reader, path)
    actual, affine_actual = through(monkeypatch, 'pyable', reader, path)
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(affine_actual, affine_expected)
    assert set(np.unique(expected)) == LABELS
