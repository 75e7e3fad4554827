"""VolumeCache: hits, what makes a miss, recovery from damage, concurrent writers, eviction."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.cache import VolumeCache
from pyable_tio.cache.stats import disk_bytes
from pyable_tio.geometry.grid import Grid
from pyable_tio.manifest.records import TransformEntry

SIZE = (20, 18, 12)  # x, y, z


@pytest.fixture(scope='module')
def manifest(tmp_path_factory) -> Path:
    """Two subjects: T1 (reference), oblique thick-slice T2, labels and a ROI."""
    return synthetic.write_dataset(tmp_path_factory.mktemp('data'), num_subjects=2, size=SIZE)


def load_all(manifest, **kwargs) -> dict[str, dict[str, np.ndarray]]:
    """Every image of every subject, loaded, as NumPy arrays by subject id and image key."""
    loaded = {}
    for subject in pt.subjects_from_manifest(manifest, **kwargs):
        subject.load()
        images = subject.get_images_dict(intensity_only=False)
        loaded[subject['id']] = {name: image.data.numpy().copy() for name, image in images.items()}
    return loaded


def assert_same(a, b):
    assert a.keys() == b.keys()
    for subject_id in a:
        assert a[subject_id].keys() == b[subject_id].keys()
        for name in a[subject_id]:
            assert a[subject_id][name].dtype == b[subject_id][name].dtype
            assert np.array_equal(a[subject_id][name], b[subject_id][name]), (subject_id, name)


def distinct_volumes(manifest) -> int:
    """Entries a full fill makes: one per distinct (file content, grid, role) triple."""
    keys = set()
    for subject in pt.subjects_from_manifest(manifest):
        for image in subject.get_images(intensity_only=False):
            reader = image.reader
            for path in image.path if isinstance(image.path, list) else [image.path]:
                keys.add((Path(path).read_bytes(), reader.grid, reader.role))
    return len(keys)


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob('*') if p.is_file())


def assert_all_entries_valid(cache: VolumeCache):
    """Every array has its sidecar and vice versa, each verifies, and no temporary is left."""
    arrays = {p.stem for p in cache.folder.glob('??/*.npy')}
    sidecars = {p.stem for p in cache.folder.glob('??/*.json')}
    assert arrays == sidecars
    for key in arrays:
        assert cache.check(key) is None, key
    assert not [p for p in files_of(cache.folder) if p.name.endswith('.tmp')]


def image_reader(path: Path, cache: VolumeCache, grid: Grid | None = None, **kwargs) -> pt.reader.GridReader:
    grid = grid or Grid.from_image(sitk.ReadImage(str(path)))
    return pt.reader.GridReader(grid, 'image', 's', cache=cache, **kwargs)


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


# ----------------------------------------------------------------- hits and misses


def test_hit_after_miss_returns_identical_arrays(manifest, tmp_path):
    uncached = load_all(manifest)
    cache = VolumeCache(tmp_path / 'cache')
    cold = load_all(manifest, cache_dir=cache)
    after_cold = cache.stats()
    assert after_cold.misses > 0 and after_cold.writes == after_cold.misses
    assert after_cold.entries == after_cold.writes
    warm = load_all(manifest, cache_dir=cache)
    after_warm = cache.stats()
    assert after_warm.misses == after_cold.misses  # nothing recomputed
    assert after_warm.hits - after_cold.hits == after_cold.hits + after_cold.misses
    assert_same(uncached, cold)
    assert_same(uncached, warm)
    assert_all_entries_valid(cache)


def test_hits_are_writable_copy_on_write_maps_torch_accepts(manifest, tmp_path):
    cache_dir = tmp_path / 'cache'
    load_all(manifest, cache_dir=cache_dir)
    subject = pt.subjects_from_manifest(manifest, cache_dir=cache_dir)[0]
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # torch warns on read-only arrays
        subject.load()
    tensor = subject['labelmap_0'].data
    before = tensor.clone()
    tensor += 1  # an in-place change stays in memory, never reaches the file
    again = pt.subjects_from_manifest(manifest, cache_dir=cache_dir)[0]
    again.load()
    assert torch.equal(again['labelmap_0'].data, before)
    assert_all_entries_valid(VolumeCache(cache_dir))


def test_hit_after_miss_with_workers_and_cache_max_bytes(manifest, tmp_path):
    """Readers (and their cache) pickle into DataLoader workers."""
    cache_dir = tmp_path / 'cache'
    dataset = pt.dataset_from_manifest(manifest, cache_dir=cache_dir, cache_max_bytes=10**9)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=lambda b: b[0])
    first = {s['id']: s['images'].data.clone() for s in loader}
    second = {s['id']: s['images'].data.clone() for s in loader}
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert VolumeCache(cache_dir).stats().entries == distinct_volumes(manifest)


def test_same_content_elsewhere_hits_and_changed_bytes_miss(tmp_path):
    cache = VolumeCache(tmp_path / 'cache')
    image = synthetic.phantom(size=(12, 10, 8), spacing=(1.0, 1.0, 1.5), seed=1)
    path = write(image, tmp_path / 'a.nii.gz')
    reader = image_reader(path, cache)
    first, _ = reader(path)
    copy = tmp_path / 'copy.nii.gz'
    copy.write_bytes(path.read_bytes())
    reader(copy)
    assert (cache.stats().hits, cache.stats().misses) == (1, 1)  # keyed by content, not by name
    write(synthetic.phantom(size=(12, 10, 8), spacing=(1.0, 1.0, 1.5), seed=2), path)
    changed, _ = reader(path)
    assert (cache.stats().hits, cache.stats().misses) == (1, 2)
    assert not np.array_equal(first, changed)
    assert np.array_equal(changed, sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[np.newaxis])


def test_file_replaced_with_same_size_and_mtime_is_hashed_again(tmp_path):
    """``cp -p``/rsync-style replacement keeps size and mtime: the inode still tells it apart."""
    import hashlib

    from pyable_tio.cache.digest import file_digest

    path, other = tmp_path / 'a.bin', tmp_path / 'b.bin'
    path.write_bytes(b'first version')
    before = file_digest(path)
    stamp = path.stat().st_mtime_ns
    other.write_bytes(b'other version')  # same size, new inode
    os.utime(other, ns=(stamp, stamp))
    os.replace(other, path)
    assert path.stat().st_mtime_ns == stamp
    assert before == hashlib.sha256(b'first version').hexdigest()
    assert file_digest(path) == hashlib.sha256(b'other version').hexdigest()


def test_changed_reference_grid_transform_content_or_dtype_miss(tmp_path):
    cache = VolumeCache(tmp_path / 'cache')
    image = synthetic.phantom(size=(12, 10, 8), spacing=(1.0, 1.0, 1.5), seed=3)
    path = write(image, tmp_path / 'a.nii.gz')
    grid = Grid.from_image(image)
    tfm = tmp_path / 'shift.tfm'
    sitk.WriteTransform(sitk.TranslationTransform(3, (1.5, 0.0, 0.0)), str(tfm))
    entries = (TransformEntry(tfm),)

    def read(**kwargs) -> np.ndarray:
        options = {'grid': grid, 'transforms': {str(path): entries}, **kwargs}
        return image_reader(path, cache, **options)(path)[0]

    def misses() -> int:
        return cache.stats().misses

    base = read()
    assert misses() == 1
    assert np.array_equal(read(), base) and misses() == 1  # same inputs: a hit

    other_grid = Grid((10, 10, 8), (1.2, 1.0, 1.5), (0.5, 0.0, 0.0), grid.direction)
    assert read(grid=other_grid).shape == (1, 8, 10, 10) and misses() == 2

    sitk.WriteTransform(sitk.TranslationTransform(3, (-2.0, 1.0, 0.0)), str(tfm))  # same path, new content
    moved = read()
    assert misses() == 3
    expected = sitk.Resample(image, image, sitk.TranslationTransform(3, (-2.0, 1.0, 0.0)), sitk.sitkLinear, 0.0)
    np.testing.assert_allclose(moved[0], sitk.GetArrayFromImage(expected), atol=1e-5)

    half = read(dtype='float16')
    assert half.dtype == np.float16 and misses() == 4
    read(interpolator='nearest')
    assert misses() == 5
    read(default_value=-1.0)
    assert misses() == 6
    assert read(dtype='float16').dtype == np.float16 and misses() == 6  # each variant is its own entry
    assert cache.stats().entries == 6


def test_label_keys_ignore_image_only_options(tmp_path):
    """Labels are nearest-neighbour in their own type whatever the image interpolator/dtype."""
    cache = VolumeCache(tmp_path / 'cache')
    labels = synthetic.label_map(synthetic.phantom(size=(12, 10, 8), seed=4))
    path = write(labels, tmp_path / 'labels.nii.gz')
    grid = Grid((10, 9, 8), (1.1, 1.1, 1.0), (0.3, 0.2, 0.0), synthetic.oblique_direction(10.0))
    for interpolator, dtype in (('linear', 'float32'), ('bspline', 'float16')):
        pt.reader.GridReader(grid, 'labelmap', 's', interpolator=interpolator, dtype=dtype, cache=cache)(path)
    assert (cache.stats().misses, cache.stats().hits) == (1, 1)


# ------------------------------------------------------------------ damage


def only_entry(cache: VolumeCache) -> tuple[str, Path, Path]:
    entries = list(cache.entries())
    assert len(entries) == 1
    return entries[0]


def oblique_entry(tmp_path: Path, seed: int):
    """A cache with one entry: a phantom resampled onto an oblique grid (cache, reader, path, array)."""
    cache = VolumeCache(tmp_path / 'cache')
    path = write(synthetic.phantom(size=(12, 10, 8), seed=seed), tmp_path / 'a.nii.gz')
    grid = Grid((11, 9, 7), (1.1, 1.1, 1.1), (0.5, 0.5, 0.5), synthetic.oblique_direction(12.0))
    reader = image_reader(path, cache, grid=grid)
    expected, _ = reader(path)
    return cache, reader, path, expected


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'sidecar', 'bad-json', 'binary-sidecar', 'no-array'])
def test_damaged_entry_is_recovered_with_a_warning(tmp_path, damage):
    cache, reader, path, expected = oblique_entry(tmp_path, seed=5)
    key, array_path, sidecar_path = only_entry(cache)
    if damage == 'truncate':
        array_path.write_bytes(array_path.read_bytes()[:-100])
    elif damage == 'flip':
        data = bytearray(array_path.read_bytes())
        data[-7] ^= 0xFF  # same size, one voxel changed: only the checksum sees it
        array_path.write_bytes(bytes(data))
    elif damage == 'sidecar':
        sidecar_path.unlink()
        old = time.time() - 3600  # an old array without sidecar: its writer died
        os.utime(array_path, (old, old))
    elif damage == 'bad-json':
        sidecar_path.write_text('{"shape": [1, 2')
    elif damage == 'binary-sidecar':
        sidecar_path.write_bytes(b'\xff\xfe\x00\x93garbage')
    else:
        array_path.unlink()
    with pytest.warns(RuntimeWarning, match='pyable-tio cache: .*recomputing'):
        recovered, _ = reader(path)
    assert np.array_equal(recovered, expected)
    stats = cache.stats()
    assert (stats.recovered, stats.misses, stats.writes) == (1, 2, 2)
    assert_all_entries_valid(cache)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        again, _ = reader(path)  # repaired: a silent hit
    assert np.array_equal(again, expected) and cache.stats().hits == 1


def test_verify_size_skips_the_checksum_but_still_catches_truncation(tmp_path):
    cache = VolumeCache(tmp_path / 'cache', verify='size')
    path = write(synthetic.phantom(size=(12, 10, 8), seed=9), tmp_path / 'a.nii.gz')
    reader = image_reader(path, cache)
    expected, _ = reader(path)
    _, array_path, _ = only_entry(cache)
    data = bytearray(array_path.read_bytes())
    data[-3] ^= 0xFF
    array_path.write_bytes(bytes(data))
    flipped, _ = reader(path)  # documented trade-off: same size, so it is served
    assert cache.stats().hits == 1 and not np.array_equal(flipped, expected)
    array_path.write_bytes(bytes(data[:-50]))
    with pytest.warns(RuntimeWarning, match='truncated'):
        recovered, _ = reader(path)
    assert np.array_equal(recovered, expected)


def test_failed_computation_or_write_leaves_nothing(tmp_path, monkeypatch):
    cache = VolumeCache(tmp_path / 'cache')
    path = write(synthetic.phantom(size=(12, 10, 8), seed=6), tmp_path / 'a.nii.gz')
    reader = image_reader(path, cache)

    def boom():
        raise pt.LoadError('subject "s": file a.nii.gz: unreadable image')

    with pytest.raises(pt.LoadError):
        cache.compute_once(lambda: reader.cache_inputs(path), boom, [path])
    real_write = np.lib.format.write_array

    def half_write(stream, array, **kwargs):
        stream.write(b'\x93NUMPY half')
        raise KeyboardInterrupt  # killed in the middle of the array

    monkeypatch.setattr(np.lib.format, 'write_array', half_write)
    with pytest.raises(KeyboardInterrupt):
        reader(path)
    monkeypatch.setattr(np.lib.format, 'write_array', real_write)
    leftovers = [p for p in files_of(cache.folder) if p.parent.name != 'sources']
    assert leftovers == []
    assert cache.stats().entries == 0
    reader(path)
    assert_all_entries_valid(cache)


def test_full_disk_serves_from_memory_with_a_warning(tmp_path, monkeypatch):
    cache = VolumeCache(tmp_path / 'cache')
    path = write(synthetic.phantom(size=(12, 10, 8), seed=8), tmp_path / 'a.nii.gz')
    reader = image_reader(path, cache)
    expected = reader.read(path)

    def full(*args):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr('pyable_tio.cache.entry.os.replace', full)
    with pytest.warns(RuntimeWarning, match='cannot write .*No space left'):
        array, _ = reader(path)
    assert np.array_equal(array, expected)
    assert cache.stats().entries == 0 and cache.stats().writes == 0
    assert [p.name for p in files_of(cache.folder)] == ['.lock']  # no entry, no temporary


def test_missing_source_raises_the_readers_load_error(tmp_path):
    cache = VolumeCache(tmp_path / 'cache')
    path = write(synthetic.phantom(size=(12, 10, 8), seed=7), tmp_path / 'a.nii.gz')
    reader = image_reader(path, cache)
    reader(path)
    path.unlink()
    with pytest.raises(pt.LoadError, match='subject "s": file .*a.nii.gz'):
        reader(path)


def test_object_arrays_are_refused_and_loads_never_unpickle(tmp_path):
    cache = VolumeCache(tmp_path / 'cache')
    with pytest.raises(TypeError, match='numeric'):
        cache.put('ab' * 32, np.array([{'a': 1}], dtype=object), {})
    # Forge an entry holding a pickled object array: it is refused, never unpickled.
    array_path, sidecar_path = cache.paths('cd' * 32)
    array_path.parent.mkdir(parents=True)
    np.save(array_path, np.array([{'a': 1}], dtype=object), allow_pickle=True)
    sidecar = {'format': 1, 'key': 'cd' * 32, 'file_bytes': array_path.stat().st_size, 'shape': [1],
               'dtype': '|O', 'crc32': 0}
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.warns(RuntimeWarning, match='not a numeric dtype'):
        assert cache.get('cd' * 32) is None
    assert not array_path.exists() and not sidecar_path.exists()


# ------------------------------------------------------------- concurrency

_FILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, warnings
    from pathlib import Path
    warnings.simplefilter('error')  # a writer must never see a damaged entry
    import pyable_tio as pt
    manifest, cache_root, go, rounds = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    limit = int(sys.argv[6])
    (cache_root / f'ready-{sys.argv[5]}').touch()
    while not go.exists():
        time.sleep(0.01)
    for r in range(rounds):
        # Odd rounds also evict while the other process writes and reads.
        options = {'cache_dir': cache_root / f'round-{r}', 'cache_max_bytes': limit if r % 2 else None}
        for subject in pt.subjects_from_manifest(manifest, **options):
            subject.load()
    """
)


def test_two_processes_filling_the_same_keys_leave_only_valid_entries(manifest, tmp_path):
    root, go, rounds, limit = tmp_path / 'caches', tmp_path / 'go', 6, 30_000  # about half of the volumes
    root.mkdir()
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore::DeprecationWarning'}
    processes = [
        subprocess.Popen(
            [sys.executable, '-c', _FILL_SCRIPT, str(manifest), str(root), str(go), str(rounds), str(i), str(limit)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for i in range(2)
    ]
    deadline = time.time() + 120
    while len(list(root.glob('ready-*'))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    go.touch()  # both start filling at the same moment
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    expected = load_all(manifest)
    for r in range(rounds):
        cache = VolumeCache(root / f'round-{r}')
        assert_all_entries_valid(cache)
        if r % 2:
            assert 0 < cache.stats().bytes <= limit
            continue
        assert cache.stats().entries == distinct_volumes(manifest)
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            assert_same(load_all(manifest, cache_dir=cache), expected)
        assert cache.stats().misses == 0


def test_threads_filling_the_same_keys(tmp_path):
    """Patch threads of one process share the cache (and its lock) safely."""
    paths = [write(synthetic.phantom(size=(12, 10, 8), seed=20 + i), tmp_path / f'{i}.nii.gz') for i in range(3)]
    grid = Grid((10, 9, 8), (1.1, 1.1, 1.0), (0.3, 0.2, 0.0), synthetic.oblique_direction(10.0))
    for max_bytes in (None, 10_000):  # 2 of the 3 entries fit: the second round evicts as others write
        cache = VolumeCache(tmp_path / f'cache-{max_bytes}', max_bytes=max_bytes)
        reader = image_reader(paths[0], cache, grid=grid)
        expected = [reader.read(path) for path in paths]
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda i: (i % 3, reader(paths[i % 3])[0]), range(24)))
        assert all(np.array_equal(array, expected[i]) for i, array in results)
        assert_all_entries_valid(cache)
        if max_bytes:
            assert cache.stats().bytes <= max_bytes and cache.counts['evicted'] > 0


# ----------------------------------------------------------------- eviction


def test_eviction_keeps_the_folder_under_its_limit_least_recently_used_first(tmp_path):
    paths = [
        write(synthetic.phantom(size=(16, 16, 8), seed=10 + i), tmp_path / f'{i}.nii.gz') for i in range(5)
    ]
    # Limits count allocated blocks: room for two entries and the five source memos, not three entries.
    def on_disk(size: int) -> int:
        probe = tmp_path / 'probe'
        probe.write_bytes(b'x' * size)
        return disk_bytes(probe.stat())

    one_entry = on_disk(16 * 16 * 8 * 4 + 128) + on_disk(2500)
    limit = 2 * one_entry + 5 * on_disk(300) + one_entry // 4
    (tmp_path / 'probe').unlink()
    cache = VolumeCache(tmp_path / 'cache', max_bytes=limit)
    grid = Grid.from_image(sitk.ReadImage(str(paths[0])))
    reader = image_reader(paths[0], cache, grid=grid)
    keys = []
    for i, path in enumerate(paths):
        reader(path)
        keys.append(reader.cache_key(path))
        if i == 1:
            for key, age in ((keys[0], 3600), (keys[1], 1800)):
                old = time.time() - age
                os.utime(cache.paths(key)[1], (old, old))
            reader(paths[0])  # a hit makes entry 0 the most recently used
        if i == 2:  # entry 1, least recently used, made room for entry 2
            assert {k for k, _, _ in cache.entries()} == {keys[0], keys[2]}
        assert cache.stats().bytes <= limit
    stats = cache.stats()
    assert stats.entries == 2 and stats.evicted == 3 and stats.hits == 1
    assert keys[4] in {k for k, _, _ in cache.entries()}
    assert_all_entries_valid(cache)


def test_evict_removes_stale_temporaries_and_respects_a_new_limit(tmp_path):
    cache = VolumeCache(tmp_path / 'cache')
    for i in range(3):
        cache.put(f'{i:02d}' * 32, np.full((1, 4, 4, 4), i, np.float32), {'i': i})
    stale = cache.folder / '00' / '.abc.npy.1.deadbeef.tmp'
    stale.write_bytes(b'x' * 10)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    fresh = cache.folder / '00' / '.abc.npy.2.cafebabe.tmp'  # a writer still at work
    fresh.write_bytes(b'x' * 10)
    assert cache.evict() == 0
    assert not stale.exists() and fresh.exists()
    sizes = [sum(disk_bytes(p.stat()) for p in cache.paths(k)) for k, _, _ in cache.entries()]
    assert cache.evict(max_bytes=max(sizes) + disk_bytes(fresh.stat())) == 2
    assert cache.stats().entries == 1
    fresh.unlink()
    mine = cache.folder / 'notes.txt'  # a cache folder shared with other files
    mine.write_text('keep me')
    os.utime(mine, (old, old))
    cache.evict(max_bytes=1)
    cache.clear()
    assert [p for p in files_of(cache.folder) if p.name != '.lock'] == [mine]


# ------------------------------------------------------------------ misc


def test_cache_pickles_with_fresh_counters_and_rejects_bad_options(tmp_path):
    cache = VolumeCache(tmp_path / 'cache', max_bytes=10**6)
    cache.put('ab' * 32, np.zeros((1, 2, 2, 2), np.uint8), {})
    assert cache.stats().writes == 1
    clone = pickle.loads(pickle.dumps(cache))
    assert (clone.folder, clone.max_bytes) == (cache.folder, 10**6)
    assert clone.stats().as_dict() == {**cache.stats().as_dict(), 'writes': 0}
    assert np.array_equal(clone.get('ab' * 32), np.zeros((1, 2, 2, 2), np.uint8))
    for bad in ({'max_bytes': 0}, {'max_bytes': -5}, {'verify': 'maybe'}):
        with pytest.raises(ValueError):
            VolumeCache(tmp_path / 'other', **bad)


def test_counters_see_loads_of_deep_copied_subjects(manifest, tmp_path):
    """TorchIO deep-copies a subject (and its readers) before loading it."""
    cache = VolumeCache(tmp_path / 'cache')
    assert copy.deepcopy(cache) is cache
    dataset = pt.dataset_from_manifest(manifest, cache_dir=cache)
    dataset[0]
    dataset[0]
    assert cache.counts['misses'] == 4 and cache.counts['hits'] == 4  # t1, t2, roi, labels


def test_subject_images_through_the_cache_keep_their_geometry(manifest, tmp_path):
    """Cached volumes are the reader's: same affine, voxels where SimpleITK puts them."""
    subject = pt.subjects_from_manifest(manifest, cache_dir=tmp_path / 'cache')[0]
    subject.load()
    cache = VolumeCache(tmp_path / 'cache')
    warm = pt.subjects_from_manifest(manifest, cache_dir=cache)[0]
    warm.load()
    assert cache.counts['hits'] == 4 and cache.counts['misses'] == 0  # t1, t2, roi, labels
    t1 = sitk.ReadImage(subject['meta']['source_paths']['images'][0])
    t2 = sitk.ReadImage(subject['meta']['source_paths']['images'][1])
    expected = sitk.GetArrayFromImage(sitk.Resample(t2, t1, sitk.Transform(), sitk.sitkLinear, 0.0))
    np.testing.assert_allclose(warm['images'].data.numpy()[1], expected, atol=1e-5)
    np.testing.assert_allclose(warm['images'].affine, Grid.from_image(t1).affine_zyx(), atol=1e-9)
    assert isinstance(warm['images'], tio.ScalarImage)


def test_untouched_entry_skips_the_checksum_in_a_new_process_but_a_rewrite_does_not(tmp_path, monkeypatch):
    from pyable_tio.cache import entry

    cache, reader, path, expected = oblique_entry(tmp_path, seed=7)
    _, array_path, _ = only_entry(cache)
    entry.forget_verified()  # as in a fresh process
    original_crc = entry.crc32

    def no_crc(array):
        raise AssertionError('checksum computed for an untouched entry')

    monkeypatch.setattr(entry, 'crc32', no_crc)
    hit, _ = reader(path)
    assert np.array_equal(hit, expected)
    monkeypatch.setattr(entry, 'crc32', original_crc)
    # The same bytes written again (a new mtime): the stamp no longer vouches for them.
    array_path.write_bytes(array_path.read_bytes())
    checked = []
    entry.forget_verified()
    original = entry.crc32
    monkeypatch.setattr(entry, 'crc32', lambda array: checked.append(1) or original(array))
    again, _ = reader(path)
    assert np.array_equal(again, expected) and checked



def test_cache_max_bytes_with_a_volume_cache_object_is_refused_when_they_differ(manifest, tmp_path):
    cache = VolumeCache(tmp_path / 'cache', max_bytes=10**7)
    with pytest.raises(ValueError, match=r'cache_max_bytes=5000 given with a VolumeCache whose max_bytes is 10000000'):
        pt.subjects_from_manifest(manifest, cache_dir=cache, cache_max_bytes=5000)
    subject = pt.subjects_from_manifest(manifest, cache_dir=cache, cache_max_bytes=10**7)[0]
    assert subject.get_images(intensity_only=False)[0].reader.cache is cache


def test_alignment_files_are_counted_and_cleared(tmp_path):
    cache = VolumeCache(tmp_path / 'cache')
    cache.put('ab' * 32, np.zeros((1, 2, 2, 2), np.float32), {})
    alignment = tmp_path / 'cache' / 'alignment'
    alignment.mkdir()
    tfm = alignment / f'{"cd" * 32}.tfm'
    tfm.write_bytes(b'#Insight Transform File V1.0\n' + b' ' * 9000)
    before = cache.stats().bytes
    assert before >= disk_bytes(tfm.stat()) + disk_bytes(cache.paths('ab' * 32)[0].stat())
    cache.clear()
    assert not tfm.exists() and not alignment.exists()


def test_the_cache_imports_nothing_above_it():
    """cache/ is the bottom layer: keys, bytes, files, locks; never plans, readers or manifests
    (imports under TYPE_CHECKING and inside functions count too)."""
    import ast

    allowed = ('pyable_tio.cache', 'pyable_tio.io', 'pyable_tio.constants', 'pyable_tio.errors')
    above = []
    for path in sorted((Path(pt.__file__).parent / 'cache').glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ('pyable_tio.cache.' + '.'.join(['x'] * (node.level - 1))) if node.level else ''
                parts = (base.split('.')[:-node.level] if node.level else []) + ([node.module] if node.module else [])
                names = ['.'.join(parts)] if node.module else ['.'.join(parts + [a.name]) for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            above += [f'{path.name}: {name}' for name in names
                      if name.startswith('pyable_tio') and not name.startswith(allowed)]
    assert not above, above
