"""Manifest formats (JSON, CSV, multi-CSV, dict, list) and the errors bad manifests give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import pyable_tio as pt
from pyable_tio import synthetic


def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """Two subjects' files in ``tmp_path/data``: t1, t2 (other grid), roi, labels."""
    folder = tmp_path / 'data'
    folder.mkdir()
    for i, name in enumerate(('s1', 's2')):
        t1 = synthetic.phantom(size=(12, 10, 8), seed=i)
        t2 = synthetic.phantom(size=(10, 9, 6), spacing=(1.3, 1.2, 2.0), origin=(1.0, 0.0, -1.0), seed=10 + i)
        write(t1, folder / f'{name}_t1.nii.gz')
        write(t2, folder / f'{name}_t2.nii.gz')
        write(sitk.Cast(t1 > 60, sitk.sitkUInt8), folder / f'{name}_roi.nii.gz')
        write(synthetic.label_map(t1), folder / f'{name}_labels.nii.gz')
    return folder


def elsewhere(tmp_path, monkeypatch):
    """Work from another folder so that relative paths can only resolve against the manifest."""
    other = tmp_path / 'elsewhere'
    other.mkdir()
    monkeypatch.chdir(other)


def image_names(record):
    return [entry.path.name for entry in record.images]


def test_json_with_relative_paths_and_extras(files, tmp_path, monkeypatch):
    content = {
        's1': {'images': ['s1_t1.nii.gz', 's1_t2.nii.gz'], 'rois': ['s1_roi.nii.gz'], 'label': 1, 'age': 41},
        's2': {'images': ['s2_t1.nii.gz', 's2_t2.nii.gz'], 'rois': ['s2_roi.nii.gz'], 'label': 0, 'age': 52},
    }
    path = files / 'manifest.json'
    path.write_text(json.dumps(content))
    elsewhere(tmp_path, monkeypatch)
    manifest = pt.read_manifest(path)
    assert manifest.ids == ['s1', 's2']
    assert manifest['s1'].images[0].path == files / 's1_t1.nii.gz'
    assert manifest['s2'].rois[0].path == files / 's2_roi.nii.gz'
    subjects = pt.subjects_from_manifest(path)
    assert subjects[0]['label'] == 1 and subjects[0].label == 1
    assert subjects[1]['age'] == 52 and subjects[1].age == 52
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(files / 's2_t1.nii.gz')))
    assert np.array_equal(subjects[1]['images'].data[0].numpy(), expected)


def test_json_list_of_paths(files):
    path = files / 'list.json'
    path.write_text(json.dumps(['s1_t1.nii.gz', 's2_t2.nii.gz']))
    manifest = pt.read_manifest(path)
    assert manifest.ids == ['s1_t1', 's2_t2']
    assert manifest['s2_t2'].images[0].path == files / 's2_t2.nii.gz'


def test_single_csv_list_cells(files, tmp_path, monkeypatch):
    text = (
        'id,image_paths,roi_paths,label,age\n'
        's1,"[""s1_t1.nii.gz"", ""s1_t2.nii.gz""]",s1_roi.nii.gz,1,41\n'
        "s2,\"['s2_t1.nii.gz', 's2_t2.nii.gz']\",,0,52\n"
        's3,s1_t1.nii.gz,"[""s1_roi.nii.gz""]",1,63\n'
    )
    path = files / 'manifest.csv'
    path.write_text(text)
    elsewhere(tmp_path, monkeypatch)
    manifest = pt.read_manifest(path)
    assert image_names(manifest['s1']) == ['s1_t1.nii.gz', 's1_t2.nii.gz']  # JSON list
    assert image_names(manifest['s2']) == ['s2_t1.nii.gz', 's2_t2.nii.gz']  # Python list literal
    assert image_names(manifest['s3']) == ['s1_t1.nii.gz']  # a single path
    assert manifest['s2'].rois == ()  # empty cell
    assert manifest['s1'].rois[0].path == files / 's1_roi.nii.gz'
    assert all(e.path.parent == files for r in manifest for _, e in r.entries())
    assert manifest['s3'].extra == {'label': 1, 'age': 63}
    two_channel = files / 'two_channel.csv'  # subjects of one dataset need the same channels
    two_channel.write_text(''.join(text.splitlines(keepends=True)[:3]))
    subjects = pt.subjects_from_manifest(two_channel, stack_channels=False, missing='empty')
    by_id = {s['id']: s for s in subjects}
    assert by_id['s2'].label == 0 and by_id['s2']['age'] == 52
    assert not by_id['s2']['roi_0'].data.any()  # filled with an empty ROI
    assert by_id['s1']['roi_0'].data.any()


def test_tab_separated_manifests(files):
    single = files / 'manifest.tsv'
    single.write_text('id\timage_paths\tage\na\t["s1_t1.nii.gz", "s1_t2.nii.gz"]\t30\n')
    manifest = pt.read_manifest(single)
    assert image_names(manifest['a']) == ['s1_t1.nii.gz', 's1_t2.nii.gz']
    assert manifest['a'].extra == {'age': 30}
    images = files / 'images.tsv'
    images.write_text('id\tsequence\tpath\nb\tt2\ts2_t2.nii.gz\nb\tt1\ts2_t1.nii.gz\n')
    assert image_names(pt.read_manifest([images])['b']) == ['s2_t1.nii.gz', 's2_t2.nii.gz']


def test_multi_csv(files, tmp_path, monkeypatch):
    # Rows deliberately in different orders for the two subjects.
    (files / 'images.csv').write_text(
        'id,sequence,path,is_reference\n'
        's1,t1,s1_t1.nii.gz,0\n'
        's1,t2,s1_t2.nii.gz,1\n'
        's2,t2,s2_t2.nii.gz,\n'
        's2,t1,s2_t1.nii.gz,\n'
    )
    (files / 'rois.csv').write_text('id,roi_type,path\ns2,tumour,s2_roi.nii.gz\ns1,tumour,s1_roi.nii.gz\n')
    (files / 'labelmaps.csv').write_text('id,label_type,path\ns1,tissue,s1_labels.nii.gz\ns2,tissue,s2_labels.nii.gz\n')
    (files / 'subjects.csv').write_text('id,label,age,site\ns1,1,41,A\ns2,0,52,B\n')
    paths = [files / name for name in ('images.csv', 'rois.csv', 'labelmaps.csv', 'subjects.csv')]
    elsewhere(tmp_path, monkeypatch)
    manifest = pt.read_manifest(paths)
    for record in manifest:
        assert [e.name for e in record.images] == ['t1', 't2']
        assert image_names(record) == [f'{record.id}_t1.nii.gz', f'{record.id}_t2.nii.gz']
        assert record.images[0].path.parent == files
    assert manifest['s1'].reference == 1  # is_reference on "t2"
    assert manifest['s2'].reference is None
    subjects = pt.subjects_from_manifest(paths)
    s1, s2 = subjects
    assert s1['meta']['names'] == {'images': ['t1', 't2'], 'rois': ['tumour'], 'labelmaps': ['tissue']}
    assert s1['meta']['reference_used'] == str(files / 's1_t2.nii.gz')
    assert s2['meta']['reference_used'] == str(files / 's2_t1.nii.gz')
    assert s1['images'].data.shape == (2, 6, 9, 10)  # on the t2 grid
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(files / 's2_t2.nii.gz')))
    resampled = sitk.Resample(sitk.ReadImage(str(files / 's2_t2.nii.gz')), sitk.ReadImage(str(files / 's2_t1.nii.gz')))
    assert expected.shape != s2['images'].data.shape[1:]
    np.testing.assert_allclose(s2['images'].data[1].numpy(), sitk.GetArrayFromImage(resampled), atol=1e-5)
    assert s1.label == 1 and s2['site'] == 'B' and s2['age'] == 52


def test_dict_manifest_with_root(files):
    manifest = pt.read_manifest(
        {'a': {'images': ['s1_t1.nii.gz'], 'labelmaps': ['s1_labels.nii.gz'], 'group': 'x'}, 'b': ['s2_t1.nii.gz']},
        root=files,
    )
    assert manifest['a'].labelmaps[0].path == files / 's1_labels.nii.gz'
    assert manifest['a'].extra == {'group': 'x'}
    assert image_names(manifest['b']) == ['s2_t1.nii.gz']
    paths = pt.read_manifest({'c': files / 's1_t1.nii.gz', 'd': [Path('s2_t1.nii.gz')]}, root=files)
    assert paths['c'].images[0].path == files / 's1_t1.nii.gz'
    assert paths['d'].images[0].path == files / 's2_t1.nii.gz'


def test_list_of_image_paths(files):
    paths = [str(files / 's1_t1.nii.gz'), str(files / 's2_t1.nii.gz')]
    subjects = pt.subjects_from_manifest(paths)
    assert [s['id'] for s in subjects] == ['s1_t1', 's2_t1']
    expected = sitk.GetArrayFromImage(sitk.ReadImage(paths[1]))
    assert np.array_equal(subjects[1]['images'].data[0].numpy(), expected)
    copy = files / 'copy'
    copy.mkdir()
    write(sitk.ReadImage(paths[0]), copy / 's1_t1.nii.gz')
    clashing = pt.read_manifest([paths[0], copy / 's1_t1.nii.gz'])
    assert clashing.ids == [paths[0], str(copy / 's1_t1.nii.gz')]  # same stems: full paths as ids


def test_file_entries_with_names_and_per_file_transforms(files):
    tfm = files / 'shift.tfm'
    sitk.WriteTransform(sitk.TranslationTransform(3, (1.0, 0.0, 0.0)), str(tfm))
    manifest = pt.read_manifest(
        {'a': {'images': [{'path': 's1_t1.nii.gz', 'name': 'T1', 'transforms': [{'path': 'shift.tfm', 'invert': True}]}]}},
        root=files,
    )
    entry = manifest['a'].images[0]
    assert entry.name == 'T1'
    assert entry.transforms == (pt.manifest.TransformEntry(tfm, True),)


# --- errors ---------------------------------------------------------------------------------


def problems_of(source, **kwargs) -> str:
    with pytest.raises(pt.ManifestError) as info:
        pt.read_manifest(source, **kwargs)
    return str(info.value)


def test_duplicate_ids_in_csv(files):
    path = files / 'dup.csv'
    path.write_text('id,image_paths\nsame,s1_t1.nii.gz\nsame,s2_t1.nii.gz\n')
    message = problems_of(path)
    assert 'subject "same"' in message and 'duplicate' in message


def test_duplicate_ids_in_json(files):
    path = files / 'dup.json'
    path.write_text('{"twice": {"images": ["s1_t1.nii.gz"]}, "once": ["s1_t1.nii.gz"], "twice": ["s2_t1.nii.gz"]}')
    message = problems_of(path)
    assert 'subject "twice"' in message and str(path) in message and 'duplicate subject id' in message
    assert 'once' not in message
    path.write_text('{"a": {"images": ["s1_t1.nii.gz"], "images": ["s2_t1.nii.gz"]}}')
    message = problems_of(path)
    assert 'key "images" listed twice' in message and 'subject "images"' not in message


def test_empty_image_list(files):
    message = problems_of({'nothing': {'images': []}}, root=files)
    assert 'nothing' in message and '"images"' in message and 'no images' in message
    path = files / 'empty.csv'
    path.write_text('id,image_paths\nblank,[]\n')
    assert 'blank' in problems_of(path)


def test_reference_index_out_of_range(files):
    message = problems_of({'r': {'images': ['s1_t1.nii.gz', 's1_t2.nii.gz'], 'reference': 5}}, root=files)
    assert 'subject "r"' in message and 'reference' in message and 'out of range' in message


def test_unreadable_list_cell(files):
    path = files / 'bad_cell.csv'
    path.write_text('id,image_paths\ncell,"[\'a.nii\'"\n')
    message = problems_of(path)
    assert 'cell' in message and 'image' in message and "['a.nii'" in message
    assert f'file {path}' in message  # the manifest file holding the cell


@pytest.mark.parametrize('cell', ["__import__('os').system('touch {marker}')", "[__import__('os').system('touch {marker}')]"])
def test_cells_are_never_evaluated(files, tmp_path, cell):
    marker = tmp_path / 'executed'
    path = files / 'evil.csv'
    path.write_text(f'id,image_paths\nevil,"{cell.format(marker=marker)}"\n')
    message = problems_of(path)
    assert 'subject "evil"' in message
    assert not marker.exists()


def test_all_missing_files_listed_at_once(files):
    manifest = {
        'one': {'images': ['s1_t1.nii.gz', 'missing_a.nii.gz']},
        'two': {'images': ['s2_t1.nii.gz'], 'labelmaps': ['missing_b.nii.gz']},
        'three': {'images': ['s1_t1.nii.gz'], 'reference': 'missing_c.nii.gz'},
    }
    with pytest.raises(pt.ManifestError) as info:
        pt.read_manifest(manifest, root=files)
    message = str(info.value)
    for subject, name in (('one', 'missing_a'), ('two', 'missing_b'), ('three', 'missing_c')):
        assert f'subject "{subject}"' in message and str(files / f'{name}.nii.gz') in message
    assert len(info.value.problems) == 3
    assert pt.read_manifest(manifest, root=files, check_files=False)['two'].labelmaps[0].path.name == 'missing_b.nii.gz'


def test_malformed_json(files):
    path = files / 'broken.json'
    path.write_text('{"s1": {"images": ["s1_t1.nii.gz"],}')
    message = problems_of(path)
    assert str(path) in message and 'invalid JSON' in message and 'line 1' in message


def test_csv_without_image_paths(files):
    path = files / 'wrong.csv'
    path.write_text('id,imagery\ns1,s1_t1.nii.gz\n')
    message = problems_of(path)
    assert str(path) in message and '"images" (or "image_paths") column' in message


def test_multi_csv_inconsistent_sequences(files):
    path = files / 'images.csv'
    path.write_text('id,sequence,path\ns1,t1,s1_t1.nii.gz\ns1,t2,s1_t2.nii.gz\ns2,t1,s2_t1.nii.gz\ns2,flair,s2_t2.nii.gz\n')
    manifest = pt.read_manifest([path])  # subjects may differ...
    assert [e.name for e in manifest['s2'].images] == ['flair', 't1']
    with pytest.raises(pt.ManifestError) as info:  # ...but not in one batch
        pt.subjects_from_manifest([path], missing='error')
    message = str(info.value)
    assert '"s2"' in message and 'flair' in message and '"s1"' in message and 'images' in message


def test_multi_csv_missing_columns_and_duplicates(files):
    path = files / 'rois.csv'
    path.write_text('id,roi_type\ns1,tumour\n')
    assert 'missing columns' in problems_of([path]) and "'path'" in problems_of([path])
    images = files / 'images.csv'
    images.write_text('id,sequence,path\ns1,t1,s1_t1.nii.gz\ns1,t1,s1_t2.nii.gz\n')
    message = problems_of([images])
    assert 'subject "s1"' in message and 'listed twice' in message


def test_missing_manifest_and_unknown_format(files):
    assert 'manifest not found' in problems_of(files / 'nope.json')
    other = files / 'manifest.yaml'
    other.write_text('a: b')
    assert 'unknown manifest format' in problems_of(other)
    assert 'only paths' in problems_of(['s1_t1.nii.gz', 3])
    assert 'no subjects' in problems_of({})


def test_bad_reference_space_and_transform_entries(files):
    message = problems_of({'g': {'images': ['s1_t1.nii.gz'], 'reference_space': '{"size": [2, 2, 2]'}}, root=files)
    assert 'subject "g"' in message and 'reference_space' in message
    message = problems_of({'t': {'images': ['s1_t1.nii.gz'], 'transforms': [{'file': 'x.tfm'}]}}, root=files)
    assert 'subject "t"' in message and 'transforms' in message


def test_read_manifest_passes_manifest_through(files):
    manifest = pt.read_manifest({'a': ['s1_t1.nii.gz']}, root=files)
    assert pt.read_manifest(manifest) is manifest
    assert isinstance(manifest['a'].images[0].path, Path)
    with pytest.raises(KeyError, match='zzz'):
        manifest['zzz']


@pytest.mark.parametrize('field, suggestion', [
    ('labelmap', 'labelmaps'), ('refrence', 'reference'), ('imgs', 'images'), ('roi', 'rois'),
    ('label_maps', 'labelmaps'), ('transform', 'transforms'), ('preproces', 'preprocess'),
    ('preprocessing', 'preprocess'),
])
def test_misspelt_fields_are_errors_with_did_you_mean(files, field, suggestion):
    manifest = {'s1': {'images': ['s1_t1.nii.gz'], field: ['s1_labels.nii.gz'], 'label': 1, 'age': 40}}
    with pytest.raises(pt.ManifestError) as info:
        pt.read_manifest(manifest, root=files)
    message = str(info.value)
    assert f'subject "s1": field "{field}": unknown field, did you mean "{suggestion}"?' in message
    assert '1 problem' in message and 'field "label"' not in message  # real extra fields stay allowed
    record = pt.read_manifest(manifest, root=files, extra_fields=[field])['s1']  # declared: kept as extra
    assert record.extra[field] == ['s1_labels.nii.gz'] and record.extra['label'] == 1


def test_misspelt_csv_column_uses_the_csv_spelling(files):
    path = files / 'typo.csv'
    path.write_text('id,image_paths,labelmap_path\ns1,s1_t1.nii.gz,s1_labels.nii.gz\n')
    message = problems_of(path)
    assert 'subject "s1"' in message and str(path) in message
    assert 'field "labelmap_path": unknown field, did you mean "labelmap_paths"?' in message


def test_misspelt_reference_keyword_is_not_file_not_found(files):
    manifest = {'s1': {'images': ['s1_t1.nii.gz'], 'reference': 'largset'}}
    message = problems_of(manifest, root=files)
    assert '"largset" is neither "first" nor "largest" (did you mean "largest"?), an index nor an existing file' in message
    assert 'not found' not in message
    (files / 'largset').mkdir()  # an existing file or folder of that name is a path after all
    assert pt.read_manifest(manifest, root=files)['s1'].reference == files / 'largset'


def test_structural_problems_do_not_hide_other_subjects_files(files):
    manifest = {
        'bad-index': {'images': ['s1_t1.nii.gz', 'gone_a.nii.gz'], 'reference': 5},
        'empty': {},
        'gone': {'images': ['gone_b.nii.gz']},
        'fine': {'images': ['s2_t1.nii.gz']},
    }
    message = problems_of(manifest, root=files)
    for expected in ('subject "bad-index": field "reference": index 5 out of range',
                     'subject "bad-index": field "images": file ' + str(files / 'gone_a.nii.gz'),
                     'subject "empty": field "images": no images listed',
                     'subject "gone": field "images": file ' + str(files / 'gone_b.nii.gz')):
        assert expected in message
    assert '4 problems' in message
    parsed, problems, listed = pt.manifest.parse_manifest(manifest, root=files)
    assert parsed.ids == ['gone', 'fine'] and listed == 4 and len(problems) == 3
