"""The QA sheet (pyable_tio.qa, ``pyable-tio qa``): a shifted label map and a misaligned channel
come first and cross their thresholds; the HTML is self-contained and its thumbnails show what
the loader delivers, with patient directions that are physically right."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import pyable_tio as pt
from pyable_tio import constants, synthetic
from pyable_tio.cli import main as cli
from pyable_tio.errors import MissingDependencyError
from pyable_tio.qa import render
from pyable_tio.qa.report import assess
from pyable_tio.qa.views import views_of

Image = pytest.importorskip('PIL.Image', reason='the qa extra (in dev) is not installed')

SIZE, SPACING = (28, 26, 16), (1.0, 1.0, 1.5)
SHIFTED_LABELS, MISALIGNED = 'sub-02', 'sub-04'


def another_contrast(t1: sitk.Image, seed: int, shift=(0.0, 0.0, 0.0)) -> sitk.Image:
    """A "T2": inverted contrast, on an oblique thick-slice grid centred on the T1 (+ ``shift`` mm)."""
    size, spacing = (SIZE[0], SIZE[1], SIZE[2] // 2), (SPACING[0], SPACING[1], SPACING[2] * 2)
    direction = np.asarray(synthetic.oblique_direction(12.0)).reshape(3, 3)
    centre = np.asarray(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in SIZE]))
    origin = centre - direction @ ((np.asarray(size) - 1) / 2 * np.asarray(spacing)) + np.asarray(shift)
    image = synthetic.phantom(size, spacing, origin, tuple(direction.ravel()), seed)
    return sitk.Cast(150.0 - image, sitk.sitkFloat32)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    """Six subjects (T1, aligned T2, labels, ROI); sub-02's label map is 12 mm off (its header),
    sub-04's T2 is 8 mm off."""
    folder = tmp_path_factory.mktemp('qa')
    manifest = {}
    for i in range(6):
        name = f'sub-{i:02d}'
        t1 = synthetic.phantom(SIZE, SPACING, seed=i)
        labels = synthetic.label_map(t1)
        t2 = another_contrast(t1, 100 + i, (0.0, 8.0, 0.0) if name == MISALIGNED else (0.0, 0.0, 0.0))
        if name == SHIFTED_LABELS:
            labels.SetOrigin((12.0, 0.0, 0.0))
        files = {'t1': t1, 't2': t2, 'labels': labels, 'roi': sitk.Cast(synthetic.label_map(t1) > 0, sitk.sitkUInt8)}
        for key, image in files.items():
            sitk.WriteImage(image, str(folder / f'{name}_{key}.nii.gz'))
        manifest[name] = {'images': [f'{name}_t1.nii.gz', {'path': f'{name}_t2.nii.gz', 'name': 'T2'}],
                          'rois': [f'{name}_roi.nii.gz'], 'labelmaps': [f'{name}_labels.nii.gz']}
    path = folder / 'manifest.json'
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope='module')
def report(dataset, tmp_path_factory):
    return pt.qa_sheet(dataset, out=tmp_path_factory.mktemp('sheet') / 'qa.html')


def by_check(row, check: str, item: str):
    return next(f for f in row.findings if f.check == check and f.item == item)


def test_shifted_label_map_and_misaligned_channel_come_first_over_their_thresholds(report):
    ids = [row.id for row in report.subjects]
    assert set(ids[:2]) == {SHIFTED_LABELS, MISALIGNED}, ids
    rows = {row.id: row for row in report.subjects}
    # The label map 12 mm off: a third of it lies outside the grid (measured from its file)
    # and off the image foreground.
    shifted = rows[SHIFTED_LABELS]
    in_grid = by_check(shifted, 'in_grid', 'labelmap_0')
    assert in_grid.value < constants.QA_MIN_IN_GRID and in_grid.crossed
    assert by_check(shifted, 'in_foreground', 'labelmap_0').value < constants.QA_MIN_IN_FOREGROUND
    assert by_check(shifted, 'in_grid', 'roi_0').value == 1.0  # its ROI is where it belongs
    label_shift = by_check(shifted, 'label_shift', 'labelmap_0')  # matched against the image: 12 mm
    assert label_shift.crossed and 10.0 <= label_shift.value <= 14.0
    # The T2 8 mm off along y: found within a voxel, over the 3 mm threshold.
    shift = by_check(rows[MISALIGNED], 'channel_shift', 'T2')
    assert shift.crossed and 7.0 <= shift.value <= 9.0
    for row in report.subjects[2:]:
        assert row.worst < constants.QA_CROSSED, (row.id, row.worst_finding)
        assert by_check(row, 'channel_shift', 'T2').value < 1.5
        assert by_check(row, 'in_grid', 'labelmap_0').value == 1.0
        assert by_check(row, 'label_shift', 'labelmap_0').value < 2.0
    # The T2s are oblique files: a notice, not a crossed threshold.
    assert by_check(report.subjects[-1], 'oblique', 'T2').badness == constants.QA_NOTICE


def test_an_intensity_outlier_and_an_image_listed_as_a_label_map_are_flagged(tmp_path):
    manifest = synthetic.write_dataset(tmp_path, num_subjects=5, size=(16, 14, 10), second_image=False)
    bright = tmp_path / 'sub-03_t1.nii.gz'
    sitk.WriteImage(sitk.ReadImage(str(bright)) * 4.0, str(bright))  # another scanner's scale
    t1 = sitk.ReadImage(str(tmp_path / 'sub-01_t1.nii.gz'))
    sitk.WriteImage(sitk.Cast(t1 * 10.0, sitk.sitkInt16), str(tmp_path / 'sub-01_labels.nii.gz'))  # a T1 as labels
    report = pt.qa_sheet(manifest, out=tmp_path / 'qa.html')
    assert {row.id for row in report.subjects[:2]} == {'sub-01', 'sub-03'}
    rows = {row.id: row for row in report.subjects}
    median = by_check(rows['sub-03'], 'intensity_z', 'image 0 median')
    assert median.crossed and median.value > constants.QA_MAX_ROBUST_Z
    values = by_check(rows['sub-01'], 'label_values', 'labelmap_0')
    assert values.crossed and values.value > constants.LABEL_MAX_DISTINCT_VALUES
    for other in ('sub-00', 'sub-02', 'sub-04'):
        assert rows[other].worst < constants.QA_CROSSED, rows[other].worst_finding


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.ids, self.links = [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if 'id' in attrs:
            self.ids.add(attrs['id'])
        if tag == 'img':
            self.images.append(attrs)
        if tag == 'a' and attrs.get('href', '').startswith('#'):
            self.links.append(attrs['href'][1:])


def test_sheet_is_one_html_file_with_a_png_per_subject_and_channel_and_the_same_order_in_csv_and_json(report):
    page = _Page()
    page.feed(report.html.read_text())
    page.close()
    assert len(page.images) == 6 * 2  # subjects x channels, nothing fetched from elsewhere
    assert all(img['src'].startswith('data:image/png;base64,') for img in page.images)
    pngs = [base64.b64decode(img['src'].split(',', 1)[1]) for img in page.images]
    sizes = set()
    for png in pngs:
        image = Image.open(io.BytesIO(png))
        image.load()
        sizes.add(image.size)
        assert np.asarray(image.convert('L')).std() > 10  # not blank
    panel = constants.QA_PANEL_PIXELS
    assert sizes == {(3 * panel + 2 * render.GAP, panel)}  # fixed size
    assert len(set(pngs)) == len(pngs)  # every thumbnail differs
    # The table links every subject's row, worst first.
    assert page.links == [f'subject-{rank}' for rank in range(1, 7)] and set(page.links) <= page.ids
    order = [row.id for row in report.subjects]
    with report.csv.open() as stream:
        assert [row['id'] for row in csv.DictReader(stream)] == order
    assert [s['id'] for s in json.loads(report.json.read_text())['subjects']] == order
    assert report.html.stat().st_size < 16_000 * len(pngs)  # small: about 10 KB per thumbnail


def marker_volume(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    """Zeros with one bright block at the patient's left, anterior and superior (LPS: +x, -y, +z)."""
    image = sitk.Image([30, 28, 24], sitk.sitkFloat32)
    image.SetSpacing((1.0, 1.2, 1.5))
    image.SetDirection(direction)
    half = (np.asarray(image.GetSize()) - 1) / 2 * np.asarray(image.GetSpacing())
    image.SetOrigin(tuple(-np.asarray(direction, float).reshape(3, 3) @ half))  # centred on (0, 0, 0)
    array = sitk.GetArrayFromImage(image)  # z, y, x
    for index in np.ndindex(*array.shape[::-1]):
        point = image.TransformIndexToPhysicalPoint([int(i) for i in index])
        if 5 < point[0] < 11 and -12 < point[1] < -5 and 6 < point[2] < 14:
            array[index[::-1]] = 100.0
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result


@pytest.mark.parametrize('direction, orientation', [
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), None),                   # LPS file as stored
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), 'RAS'),                  # reoriented grid
    ((-1, 0, 0, 0, -1, 0, 0, 0, 1), None),                 # RAS file as stored
    ((0, 0, 1, 1, 0, 0, 0, 1, 0), 'PIR'),                  # permuted axes, reoriented
    (synthetic.oblique_direction(20.0, 'x'), None),        # oblique grid
])
def test_a_marker_at_the_patients_left_appears_on_the_side_labelled_L(direction, orientation, tmp_path):
    path = tmp_path / 'marker.nii.gz'
    sitk.WriteImage(marker_volume(direction), str(path))
    subject = pt.subjects_from_manifest([str(path)], orientation=orientation)[0]
    volume = subject['images'].data[0].numpy()
    views = views_of(subject['images'].affine, np.asarray(np.nonzero(volume > 50)).mean(axis=1).round().astype(int))
    # Radiological layout whatever the grid: anterior/superior up, patient's left on the right.
    assert [v.letters for v in views] == [
        {'top': 'A', 'bottom': 'P', 'left': 'R', 'right': 'L'},
        {'top': 'S', 'bottom': 'I', 'left': 'R', 'right': 'L'},
        {'top': 'S', 'bottom': 'I', 'left': 'A', 'right': 'P'},
    ]
    # In the pixels of the PNG: the marker lies on the sides labelled L, A and S.
    png = Image.open(io.BytesIO(render.channel_png(volume, [], views))).convert('RGB')
    pixels = np.asarray(png).astype(int)
    side = constants.QA_PANEL_PIXELS
    for i, view in enumerate(views):
        panel = pixels[:, i * (side + render.GAP): i * (side + render.GAP) + side]
        rows, cols = np.nonzero(panel.min(axis=2) > 200)  # white marker (letters are yellow)
        assert rows.size > 20, view.name
        row, col = rows.mean() / side, cols.mean() / side
        letters = view.letters
        for want in 'LAS':
            if letters['right'] == want:
                assert col > 0.55, (view.name, want, col)
            if letters['left'] == want:
                assert col < 0.45, (view.name, want, col)
            if letters['top'] == want:
                assert row < 0.45, (view.name, want, row)


def test_cli_qa_takes_the_validate_and_cache_options_and_reads_a_warm_cache(dataset, tmp_path, capsys):
    out = tmp_path / 'sheet' / 'qa.html'
    args = ['qa', str(dataset), '--out', str(out), '--cache-dir', str(tmp_path / 'cache'), '--orientation', 'RAS',
            '--missing', 'error', '--no-progress']
    assert cli.main(args + ['--workers', '2']) == 0
    text = capsys.readouterr().out
    assert f'{out}: 6 subject(s), worst first, 2 crossing a threshold' in text
    assert out.is_file() and out.with_suffix('.csv').is_file() and out.with_suffix('.json').is_file()
    first = json.loads(out.with_suffix('.json').read_text())['subjects']
    # Warm: every volume comes from the cache, same scores.
    cache = pt.VolumeCache(tmp_path / 'cache')
    plans = [s.plan for s in pt.subjects_from_manifest(dataset, cache_dir=cache, orientation='RAS')]
    rows = [assess(plan, cache) for plan in plans]
    assert cache.counts['misses'] == 0 and cache.counts['hits'] == 6 * 4
    assert {r.id for r in rows} == {s['id'] for s in first}
    assert cli.main(['qa', str(dataset), '--out', str(out), '--shard', '0/2', '--workers', '0', '--no-progress']) == 0
    assert len(json.loads(out.with_suffix('.json').read_text())['subjects']) < 6
    capsys.readouterr()
    assert cli.main(['qa', str(dataset), str(dataset), '--out', str(out)]) == 2  # one sheet, one manifest
    assert 'one manifest per sheet' in capsys.readouterr().err


def test_a_subject_that_fails_to_load_is_on_top_with_its_problem(dataset, tmp_path, capsys):
    records = json.loads(dataset.read_text())
    records = {name: {field: [str(dataset.parent / (v if isinstance(v, str) else v['path'])) for v in value]
                      for field, value in record.items()} for name, record in list(records.items())[:2]}
    broken = tmp_path / 'broken.nii.gz'
    shutil.copyfile(dataset.parent / 'sub-00_t1.nii.gz', broken)
    records['sub-00']['images'][1] = str(broken)
    manifest = tmp_path / 'manifest.json'
    manifest.write_text(json.dumps(records))
    broken.write_bytes(broken.read_bytes()[:-4000])  # its header reads; its voxels are cut short
    assert cli.main(['qa', str(manifest), '--out', str(tmp_path / 'qa.html'), '--workers', '0', '--no-progress']) == 1
    out, err = capsys.readouterr()
    assert 'subject "sub-00"' in err and 'broken.nii.gz' in err
    sheet = json.loads((tmp_path / 'qa.json').read_text())
    assert sheet['subjects'][0]['id'] == 'sub-00' and 'broken.nii.gz' in sheet['subjects'][0]['problem']


def test_missing_pillow_is_one_clear_line(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'PIL', None)
    with pytest.raises(MissingDependencyError, match=r'Pillow: pip install "pyable-tio\[qa\]"'):
        render.pillow()
    assert cli.main(['qa', str(dataset), '--out', str(tmp_path / 'qa.html'), '--no-progress']) == 1
    err = capsys.readouterr().err.strip()
    assert err == 'pyable-tio: error: the QA sheet draws its thumbnails with Pillow: pip install "pyable-tio[qa]"'
    assert not (tmp_path / 'qa.html').exists()


def test_import_pyable_tio_imports_neither_pillow_nor_matplotlib():
    code = 'import sys, pyable_tio; print(sorted({"PIL", "matplotlib", "pyable_tio.qa"} & set(sys.modules)))'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == '[]'


def chromium() -> str | None:
    return next((shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(n)), None)


@pytest.mark.skipif(chromium() is None, reason='Chromium is not installed (apt-get install chromium)')
def test_the_sheet_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / 'shot.png'
    command = [chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
               '--window-size=1000,900', f'--screenshot={shot}', report.html.as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    pixels = np.asarray(Image.open(shot).convert('RGB')).astype(int)
    assert pixels.std() > 20  # not a blank page
    # The thumbnails are drawn: the red and green contours of the overlays are on screen.
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    green = (pixels[..., 1] > 180) & (pixels[..., 0] < 100) & (pixels[..., 2] < 100)
    assert red.sum() > 100 and green.sum() > 100


@pytest.mark.realdata
def test_on_the_mni_template_a_shifted_label_map_and_a_misaligned_channel_are_on_top(mni, tmp_path):
    """MNI152 (2 mm): T1, the grey-matter map as a second contrast, WM/GM labels."""
    def shrunk(name: str) -> sitk.Image:
        return sitk.Shrink(sitk.ReadImage(str(mni[name])), [2, 2, 2])

    t1, gm, wm = sitk.Cast(shrunk('t1'), sitk.sitkFloat32), shrunk('gm'), shrunk('wm')
    labels = sitk.Cast(wm > 128, sitk.sitkUInt8) + 2 * sitk.Cast(gm > 128, sitk.sitkUInt8)
    grey = sitk.Cast(gm, sitk.sitkFloat32)

    def moved(image: sitk.Image, offset) -> sitk.Image:
        copy = sitk.Image(image)
        copy.SetOrigin(tuple(np.asarray(image.GetOrigin()) + offset))
        return copy

    files = {'t1': t1, 'gm': grey, 'labels': labels, 'gm_moved': moved(grey, (0.0, 7.0, 0.0)),
             'labels_moved': moved(labels, (0.0, 0.0, 15.0))}
    for name, image in files.items():
        sitk.WriteImage(image, str(tmp_path / f'{name}.nii.gz'))
    def subject(gm_file: str, label_file: str) -> dict:
        return {'images': [str(tmp_path / 't1.nii.gz'), {'path': str(tmp_path / gm_file), 'name': 'GM'}],
                'labelmaps': [str(tmp_path / label_file)]}

    manifest = {'mni-a': subject('gm.nii.gz', 'labels.nii.gz'), 'mni-misaligned': subject('gm_moved.nii.gz', 'labels.nii.gz'),
                'mni-b': subject('gm.nii.gz', 'labels.nii.gz'), 'mni-shifted-labels': subject('gm.nii.gz', 'labels_moved.nii.gz')}
    report = pt.qa_sheet(manifest, out=tmp_path / 'qa.html', cache_dir=tmp_path / 'cache')
    for row in report.subjects:
        print(row.id, f'{row.worst:.2f}', row.worst_finding.text, f'{row.seconds:.2f} s')
    assert {row.id for row in report.subjects[:2]} == {'mni-misaligned', 'mni-shifted-labels'}
    rows = {row.id: row for row in report.subjects}
    assert 5.0 <= by_check(rows['mni-misaligned'], 'channel_shift', 'GM').value <= 9.0
    assert 12.0 <= by_check(rows["mni-shifted-labels"], "label_shift", "labelmap_0").value <= 18.0
    assert all(row.worst < constants.QA_CROSSED for row in report.subjects[2:])
    assert by_check(rows['mni-a'], 'channel_shift', 'GM').value < 1.5


def test_direction_noise_is_not_an_oblique_file_as_in_validate(tmp_path):
    """The oblique notice uses validate's tolerance: 1e-4 of converter noise is axis-aligned in both."""
    from pyable_tio.checking.validate import orientation_label
    from pyable_tio.geometry.grid import Grid
    from pyable_tio.qa.scores import header_findings

    noisy = synthetic.oblique_direction(0.01, 'z')  # cosines 1 - 1.5e-8, sines 1.7e-4
    for direction, oblique in ((noisy, False), (synthetic.oblique_direction(12.0, 'z'), True)):
        image = synthetic.phantom((16, 16, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        image.SetDirection(direction)
        path = tmp_path / f'{oblique}.nii.gz'
        sitk.WriteImage(image, str(path))
        entry = pt.subjects_from_manifest([str(path)])[0].plan.entries[0]
        found = [f.check for f in header_findings(entry, 'T1')]
        assert ('oblique' in found) is oblique
        assert ('oblique' in orientation_label(Grid.from_image(image))) is oblique
