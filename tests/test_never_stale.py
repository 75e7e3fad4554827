"""Never stale: a stored result's key describes exactly the bytes that were read.

Sources replaced (``os.replace``, as rsync does) while a volume, a preprocessed volume or a
statistic is computed; in-process memos after a file is replaced; damaged JSON of any shape in
sidecars and source memos; ``info --check`` finding an entry whose source no longer has the
content its key names. Each result is compared with a fresh uncached load.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.patching import stats as volume_stats
from pyable_tio.cache import digest as hashing
from pyable_tio.cli import main as cli
from pyable_tio.io import backend
from pyable_tio.reader import GridReader
from pyable_tio.cache import VolumeCache
from pyable_tio.cache.entry import forget_verified
from pyable_tio.cache.digest import memo_path
from pyable_tio.constants import CACHE_SOURCES_FOLDER
from pyable_tio.geometry.grid import Grid
from pyable_tio.preprocess import Preprocessing, clear_recent

SIZE = (12, 10, 8)


class Scale:
    """A preprocessing step: multiplies by ``factor``."""

    def __init__(self, factor: float):
        self.factor = factor
        self.key = {'name': 'scale', 'factor': factor}

    def __call__(self, image: sitk.Image) -> sitk.Image:
        return image * self.factor


@pytest.fixture()
def versions(tmp_path):
    """Two versions (a, b) of one image on one grid, and the path the dataset reads (holding a)."""
    a = tmp_path / 'versions' / 'a.nii.gz'
    a.parent.mkdir()
    sitk.WriteImage(synthetic.phantom(size=SIZE, seed=1), str(a))
    b = a.with_name('b.nii.gz')
    sitk.WriteImage(synthetic.phantom(size=SIZE, seed=2) * 3.0 + 50.0, str(b))
    path = tmp_path / 't1.nii.gz'
    shutil.copy(a, path)
    return a, b, path


def place(version: Path, path: Path) -> None:
    """Replace ``path`` by a copy of ``version`` atomically (a new inode, as rsync does)."""
    temporary = path.with_name(f'.{path.name}.{threading.get_ident()}.part')
    shutil.copy(version, temporary)
    os.replace(temporary, path)


def fresh_process_memos() -> None:
    """Forget what this process remembers, as a new process would."""
    hashing.forget_digests()
    forget_verified()
    clear_recent()


def grid_of(path: Path) -> Grid:
    return Grid.from_image(sitk.ReadImage(str(path)))


def uncached(path: Path, grid: Grid, **kwargs) -> np.ndarray:
    clear_recent()
    reader = GridReader(grid, 'image', 's', **kwargs)
    return np.asarray(reader.read(path))


def swap_during_load(monkeypatch, path: Path, version: Path, after: bool = False) -> list[int]:
    """Replace ``path`` by ``version`` once, just before (or after) the next read of ``path``."""
    real, done = backend.load, []

    def load(source, *args, **kwargs):
        if Path(source) == path and not done and not after:
            done.append(1)
            place(version, path)
        image = real(source, *args, **kwargs)
        if Path(source) == path and not done and after:
            done.append(1)
            place(version, path)
        return image

    monkeypatch.setattr(backend, 'load', load)
    return done


# ------------------------------------------------------------------ the race


def test_a_source_replaced_between_key_and_read_is_never_stored_under_the_old_key(versions, tmp_path, monkeypatch):
    a, b, path = versions
    grid = grid_of(a)
    expected = {'a': uncached(a, grid), 'b': uncached(b, grid)}
    cache = VolumeCache(tmp_path / 'cache')
    reader = GridReader(grid, 'image', 's', cache=cache)
    done = swap_during_load(monkeypatch, path, b)
    np.testing.assert_array_equal(reader(path)[0], expected['b'])
    assert done
    monkeypatch.undo()
    # Each version, stable, in a "new process": served its own voxels.
    for name, version in [('a', a), ('b', b), ('a', a)]:
        place(version, path)
        fresh_process_memos()
        np.testing.assert_array_equal(reader(path)[0], expected[name], err_msg=f'version {name}')
    assert all(cache.check(key) is None for key, _, _ in cache.entries())


def test_a_source_replaced_over_and_over_while_loads_fill_the_cache(versions, tmp_path):
    """A thread swaps the file while loads miss: every load and every entry is one whole version."""
    a, b, path = versions
    grid = grid_of(a)
    expected = {'a': uncached(a, grid), 'b': uncached(b, grid)}
    cache = VolumeCache(tmp_path / 'cache')
    # Another default value per load: every load a miss, every entry kept (and all are checked).
    readers = [GridReader(grid, 'image', 's', cache=cache, default_value=float(i)) for i in range(60)]
    stop = threading.Event()

    def swapper() -> None:
        rng = np.random.default_rng(0)
        while not stop.is_set():
            place(a if rng.random() < 0.5 else b, path)
            stop.wait(float(rng.uniform(0.002, 0.02)))

    thread = threading.Thread(target=swapper)
    thread.start()
    gave_up = 0
    try:
        for reader in readers:
            try:
                array = np.asarray(reader(path)[0])
            except pt.LoadError as error:
                assert 'changed while it was read' in str(error) and 'subject "s"' in str(error)
                gave_up += 1
                continue
            assert any(np.array_equal(array, e) for e in expected.values())
    finally:
        stop.set()
        thread.join()
    assert gave_up < 30 and len(list(cache.entries())) >= 30
    for name, version in [('a', a), ('b', b)]:
        place(version, path)
        fresh_process_memos()
        for i, reader in enumerate(readers):
            np.testing.assert_array_equal(reader(path)[0], expected[name], err_msg=f'version {name}, load {i}')


def test_a_file_that_keeps_changing_fails_naming_subject_and_file(versions, tmp_path, monkeypatch):
    a, b, path = versions
    reader = GridReader(grid_of(a), 'image', 'sub-07', cache=VolumeCache(tmp_path / 'cache'))
    real, flip = backend.load, [a, b]

    def load(source, *args, **kwargs):
        flip.reverse()
        place(flip[0], path)  # another version before every read
        return real(source, *args, **kwargs)

    monkeypatch.setattr(backend, 'load', load)
    with pytest.raises(pt.LoadError, match=r'subject "sub-07": file .*t1.nii.gz: .*changed while it was read, 3 times'):
        reader(path)
    assert not list(VolumeCache(tmp_path / 'cache').entries())


@pytest.mark.parametrize('with_cache', [True, False], ids=['cache', 'no-cache'])
def test_preprocessing_of_a_source_replaced_after_it_was_read(versions, tmp_path, monkeypatch, with_cache):
    """The file is read, then replaced before its digest is taken: the steps' output of the old
    version must never be kept under the new version's key (on disk, or in the process memo)."""
    a, b, path = versions
    grid = grid_of(a)
    steps = Preprocessing((Scale(2.0),))
    expected = {name: uncached(v, grid, preprocessing={str(v): steps}) for name, v in (('a', a), ('b', b))}
    cache = VolumeCache(tmp_path / 'cache') if with_cache else None
    reader = GridReader(grid, 'image', 's', cache=cache, preprocessing={str(path): steps})
    clear_recent()
    done = swap_during_load(monkeypatch, path, b, after=True)
    first = np.asarray(reader(path)[0])
    assert done
    assert any(np.array_equal(first, e) for e in expected.values())  # one whole version
    monkeypatch.undo()
    hashing.forget_digests()
    forget_verified()  # the process memo of the outputs is kept: it must not be stale either
    for name, version in [('b', b), ('a', a), ('b', b)]:
        place(version, path)
        np.testing.assert_array_equal(reader(path)[0], expected[name], err_msg=f'version {name}')


# ------------------------------------------------------------ statistics memo


def test_znormalization_after_the_file_is_replaced_uses_the_new_statistics(tmp_path):
    """Two queues in one process; the image replaced in between: patches use the new mean and std."""
    manifest = synthetic.write_dataset(tmp_path / 'data', num_subjects=1, size=(20, 18, 12))
    t1 = manifest.parent / json.loads(manifest.read_text())['sub-00']['images'][0]
    changed = tmp_path / 'changed.nii.gz'
    sitk.WriteImage(sitk.ReadImage(str(t1)) * 4.0 + 300.0, str(changed))

    def patches_and_volume() -> tuple[list[tio.Subject], torch.Tensor]:
        queue = pt.queue_from_manifest(manifest, patch_size=(6, 6, 6), samples_per_volume=4, max_length=4,
                                       transform=tio.ZNormalization(), shuffle_subjects=False)
        whole = pt.subjects_from_manifest(manifest)[0]
        whole.load()
        return [queue[i] for i in range(4)], whole['images'].data.float()

    for _ in range(2):
        patches, volume = patches_and_volume()
        mean, std = volume.mean(), volume.std()
        for patch in patches:
            d0, h0, w0, d1, h1, w1 = (int(v) for v in patch[tio.LOCATION])
            expected = (volume[:, d0:d1, h0:h1, w0:w1] - mean) / std
            torch.testing.assert_close(patch['images'].data, expected, rtol=1e-4, atol=1e-4)
        place(changed, t1)


def test_a_statistic_computed_while_its_file_is_replaced_is_not_kept(versions):
    a, b, path = versions
    image = tio.ScalarImage(path, reader=GridReader(grid_of(a), 'image', 's'))
    key = volume_stats.volume_key(image)
    calls = []

    def compute() -> float:
        calls.append(1)
        place(b, path)  # replaced while the volume is read
        return 1.0

    volume_stats.remembered((key, 'mean'), compute)
    volume_stats.remembered((key, 'mean'), compute)
    assert len(calls) == 2  # the first value was not kept: it may describe either version
    assert volume_stats.volume_key(image) != key


# --------------------------------------------------------------- damaged JSON


DAMAGE = {
    'crc32-1e999': lambda s: s.replace(f'"crc32": {json.loads(s)["crc32"]}', '"crc32": 1e999'),
    'shape-1e999': lambda s: json.dumps({**json.loads(s), 'shape': [1e999, 10, 12, 1]}),
    'nested-100k': lambda s: '[' * 100_000 + ']' * 100_000,
    'a-list': lambda s: '[1, 2, 3]',
    'file-bytes-true': lambda s: json.dumps({**json.loads(s), 'file_bytes': True}),
    'dtype-nested': lambda s: json.dumps({**json.loads(s), 'dtype': [['a', '<f4']]}),
}


def damaged_cache(tmp_path: Path, damage: str) -> tuple[Path, Path]:
    manifest = synthetic.write_dataset(tmp_path / 'data', num_subjects=1, size=SIZE)
    folder = tmp_path / 'cache'
    for subject in pt.subjects_from_manifest(manifest, cache_dir=folder):
        subject.load()
    cache = VolumeCache(folder)
    for _, _, sidecar in cache.entries():
        sidecar.write_text(DAMAGE[damage](sidecar.read_text()))
    for memo in (folder / CACHE_SOURCES_FOLDER).glob('*.json'):
        memo.write_text('{"path": ' * 100_000 + '1' + '}' * 100_000)
    return manifest, folder


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_sidecars_and_memos_are_recomputed_with_a_warning(tmp_path, damage):
    manifest, folder = damaged_cache(tmp_path, damage)
    expected = {s['id']: s for s in pt.subjects_from_manifest(manifest)}
    fresh_process_memos()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for subject in pt.subjects_from_manifest(manifest, cache_dir=folder):
            subject.load()
            for name, image in subject.get_images_dict(intensity_only=False).items():
                torch.testing.assert_close(image.data, expected[subject['id']][name].data, rtol=0, atol=0)
    assert any('unreadable sidecar' in str(w.message) for w in caught)
    assert any('damaged digest memo' in str(w.message) for w in caught)
    assert all(VolumeCache(folder).check(key) is None for key, _, _ in VolumeCache(folder).entries())
    assert not VolumeCache(folder).check_sources()  # every memo rewritten whole


@pytest.mark.parametrize(('damage', 'workers'), [('crc32-1e999', '0'), ('nested-100k', '0'), ('nested-100k', '2')])
def test_damaged_json_never_crashes_the_cli(tmp_path, capsys, damage, workers):
    manifest, folder = damaged_cache(tmp_path, damage)
    assert cli.main(['info', '--cache-dir', str(folder), '--check']) == 1
    assert 'unreadable sidecar' in capsys.readouterr().err
    assert cli.main(['cache', str(manifest), '--cache-dir', str(folder), '--workers', workers, '--no-progress']) == 0
    assert cli.main(['info', '--cache-dir', str(folder), '--check']) == 0, capsys.readouterr().err


# ------------------------------------------------------------------ info --check


def test_info_check_finds_an_entry_whose_source_no_longer_has_its_keys_content(versions, tmp_path, capsys):
    """A wrong digest memo (here forged for the file's current version) keys the volume by
    other content; ``info --check`` rehashes the unchanged source and reports the entry."""
    a, b, path = versions
    folder = tmp_path / 'cache'
    cache = VolumeCache(folder)
    signature, stat = hashing.file_signature(path), path.stat()
    memo = memo_path(folder / CACHE_SOURCES_FOLDER, signature[0])
    memo.parent.mkdir(parents=True)
    wrong = hashing.hash_file(b)
    memo.write_text(json.dumps({'path': signature[0], 'size': signature[1], 'mtime_ns': signature[2],
                                'ctime_ns': signature[3], 'inode': stat.st_ino, 'device': stat.st_dev,
                                'sha256': wrong}))
    hashing.forget_digests()
    GridReader(grid_of(a), 'image', 's', cache=cache)(path)
    (key,) = [key for key, _, _ in cache.entries()]
    assert 'no longer has the content its key names' in cache.check(key)
    assert cli.main(['info', '--cache-dir', str(folder), '--check']) == 1
    assert f'cache entry {key}' in capsys.readouterr().err


def test_an_unremovable_damaged_entry_is_written_again_once_it_is_out_of_the_way(versions, tmp_path):
    """The process remembers that a damaged entry could not be removed only while its files stay as they were."""
    a, _, path = versions
    cache = VolumeCache(tmp_path / 'cache')
    reader = GridReader(grid_of(a), 'image', 's', cache=cache)
    expected = np.asarray(reader(path)[0]).copy()
    ((key, array_path, _),) = list(cache.entries())
    array_path.unlink()
    array_path.mkdir()  # a directory in the way
    (array_path / 'x').write_text('not the cache\'s')
    with pytest.warns(RuntimeWarning, match='cannot be removed'):
        np.testing.assert_array_equal(reader(path)[0], expected)
    shutil.rmtree(array_path)  # its owner clears the way
    writes = cache.counts['writes']
    np.testing.assert_array_equal(reader(path)[0], expected)
    assert cache.counts['writes'] == writes + 1 and cache.check(key) is None
