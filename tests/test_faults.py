"""Fault injection: the cache never serves a wrong array, cleans up after crashes, and the CLI
never reports a success it did not have.

Every test compares what is served with a fresh uncached load and counts the wrong arrays
(``wrong``); each must stay at zero. Run alone with ``pytest -m faults``.
docs/CACHE_AND_CLI.md ("Guarantees") names the test behind each promise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

import pyable_tio as pt
from pyable_tio import synthetic
from pyable_tio.cache import digest as hashing
from pyable_tio.cache import VolumeCache, entry
from pyable_tio.cache.digest import memo_path
from pyable_tio.cache.stats import disk_bytes
from pyable_tio.cli.main import main
from pyable_tio.geometry.grid import Grid

pytestmark = pytest.mark.faults

SIZE = (12, 10, 8)
ENV = {**os.environ, 'PYTHONWARNINGS': 'ignore::DeprecationWarning', 'PYTHONPATH': str(Path(pt.__file__).parents[1])}


class Served:
    """Loads through a reader and counts the arrays that differ from the uncached ones."""

    def __init__(self, reader: pt.reader.GridReader, paths: list[Path]) -> None:
        self.reader, self.paths = reader, paths
        self.expected = {path: reader.read(path) for path in paths}
        self.loads = self.wrong = 0

    def load(self, path: Path) -> np.ndarray:
        array, _ = self.reader(path)
        self.loads += 1
        self.wrong += not np.array_equal(array, self.expected[path])
        return array

    def load_all(self) -> None:
        for path in self.paths:
            self.load(path)


def sources(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f'src{i}.nii.gz'
        sitk.WriteImage(synthetic.phantom(size=SIZE, seed=40 + i), str(path))
        paths.append(path)
    return paths


def filled(tmp_path: Path, count: int = 3) -> tuple[VolumeCache, Served]:
    """A cache holding ``count`` entries of the same shape (one per source file)."""
    paths = sources(tmp_path / 'data', count)
    cache = VolumeCache(tmp_path / 'cache')
    grid = Grid((10, 9, 8), (1.1, 1.1, 1.0), (0.3, 0.2, 0.0), synthetic.oblique_direction(10.0))
    served = Served(pt.reader.GridReader(grid, 'image', 's', cache=cache), paths)
    served.load_all()
    assert cache.counts['writes'] == count
    return cache, served


def fresh_process() -> None:
    """Forget what this process verified and hashed, as a new DataLoader worker would."""
    entry.forget_verified()
    hashing.forget_digests()


def entry_paths(cache: VolumeCache, served: Served, path: Path) -> tuple[str, Path, Path]:
    key = served.reader.cache_key(path)
    return (key, *cache.paths(key))


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The command line in a new process (for resource limits and signals)."""
    return subprocess.run([sys.executable, '-m', 'pyable_tio', *args], capture_output=True, text=True, env=ENV,
                          timeout=300, **kwargs)


def run(capsys, *args: str) -> tuple[int, str, str]:
    """The command line in this process: exit code, stdout, stderr (``capsys`` or ``capfd``)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def forked(function, *args) -> int:
    """Run ``function(*args)`` in a forked child (NumPy and files only, no ITK); its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            status = function(*args) or 0
        except BaseException:
            status = 70
        os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


# ------------------------------------------------------------------ same-size damage


def _restore_times(path: Path, stat: os.stat_result) -> None:
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize('damage', ['zeroed', 'flip-utime', 'cp-p', 'mv-other', 'pair-under-other-name'])
def test_same_size_damage_with_times_put_back_is_never_served(tmp_path, damage):
    """Damage a stat-only check cannot see (size and mtime unchanged) is caught in a new process."""
    cache, served = filled(tmp_path)
    key, array_path, sidecar_path = entry_paths(cache, served, served.paths[0])
    _, other_array, other_sidecar = entry_paths(cache, served, served.paths[1])
    before = array_path.stat()
    if damage == 'zeroed':  # a crash lost the data blocks, the metadata survived
        with array_path.open('r+b') as stream:
            stream.seek(128)
            stream.write(bytes(before.st_size - 128))
        _restore_times(array_path, before)
    elif damage == 'flip-utime':
        with array_path.open('r+b') as stream:
            stream.seek(-7, os.SEEK_END)
            byte = stream.read(1)
            stream.seek(-7, os.SEEK_END)
            stream.write(bytes([byte[0] ^ 0xFF]))
        _restore_times(array_path, before)
    elif damage == 'cp-p':  # same inode, bytes and mtime of another entry of the same shape
        shutil.copy2(other_array, array_path)
        _restore_times(array_path, before)
    elif damage == 'mv-other':
        os.replace(other_array, array_path)
    else:  # another entry's array and sidecar under this entry's name
        shutil.copy2(other_array, array_path)
        shutil.copy2(other_sidecar, sidecar_path)
    assert array_path.stat().st_size == before.st_size
    fresh_process()
    with pytest.warns(RuntimeWarning, match='pyable-tio cache: .*(checksum mismatch|belongs to entry)'):
        served.load(served.paths[0])
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter('always')
        served.load_all()
    if damage == 'mv-other':  # the other entry lost its array: recovered as well
        assert [str(w.message) for w in later if 'array file missing' in str(w.message)]
    assert served.wrong == 0, f'{served.wrong} wrong arrays of {served.loads}'
    assert cache.check(key) is None


def test_untouched_entries_are_still_trusted_without_reading_them(tmp_path, monkeypatch):
    """The stamp keeps warm starts fast: an untouched entry's checksum is not recomputed."""
    cache, served = filled(tmp_path)
    fresh_process()
    monkeypatch.setattr(entry, 'crc32', lambda array: pytest.fail('checksum of an untouched entry'))
    served.load_all()
    assert served.wrong == 0 and cache.counts['hits'] == 3


# ------------------------------------------------------------------ source memos


def test_swapped_source_memos_never_swap_subjects(tmp_path):
    cache, served = filled(tmp_path, count=2)
    memos = [memo_path(cache.folder / 'sources', str(path.resolve())) for path in served.paths]
    assert all(memo.exists() for memo in memos)
    first, second = (memo.read_bytes() for memo in memos)
    memos[0].write_bytes(second)
    memos[1].write_bytes(first)
    fresh_process()
    served.load_all()
    assert served.wrong == 0, f'{served.wrong} wrong arrays of {served.loads}'
    assert cache.counts['hits'] == 2  # the memos were re-made from the files, the entries reused
    assert all(json.loads(memo.read_bytes())['path'] == str(path.resolve()) for memo, path in zip(memos, served.paths))


def test_info_check_finds_a_forged_memo(tmp_path, capsys):
    cache, served = filled(tmp_path, count=1)
    memo = memo_path(cache.folder / 'sources', str(served.paths[0].resolve()))
    record = json.loads(memo.read_bytes())
    memo.write_text(json.dumps({**record, 'sha256': 'f' * 64}))  # right file version, wrong digest
    code, _, err = run(capsys, 'info', '--cache-dir', str(cache.folder), '--check')
    assert code == 1 and 'wrong digest for its file' in err
    assert not memo.exists()


def test_memos_stay_one_per_source_and_are_counted_on_disk(tmp_path, monkeypatch):
    cache, served = filled(tmp_path, count=1)
    path = served.paths[0]
    for i in range(50):  # 50 touches: 50 file versions, one memo
        os.utime(path, (1_600_000_000 + i, 1_600_000_000 + i))
        fresh_process()
        served.load(path)
    memos = list((cache.folder / 'sources').iterdir())
    assert len(memos) == 1 and served.wrong == 0
    on_disk = sum(disk_bytes(p.stat()) for p in cache.folder.rglob('*') if p.is_file() and p.name != '.lock')
    assert cache.stats().bytes == on_disk >= sum(p.stat().st_size for p in cache.folder.rglob('*') if p.is_file())
    # In-process memos are bounded too.
    monkeypatch.setattr(hashing, 'DIGEST_MEMO_LIMIT', 4)
    monkeypatch.setattr(entry, 'VERIFIED_MEMO_LIMIT', 2)
    others = sources(tmp_path / 'more', 6)
    for other in others:
        hashing.file_digest(other)
    served.load_all()
    _, more = filled(tmp_path / 'again', count=3)
    assert hashing.memo_size() == 4 and entry.verified_count() <= 2 and more.wrong == 0


# ------------------------------------------------------------------ kills and leftovers

def _killed_writer(folder: Path, point: str) -> None:
    """Write one entry and die (``os._exit``) at ``point`` of the write."""
    cache = VolumeCache(folder)
    real_replace, real_write, real_lock = os.replace, np.lib.format.write_array, entry.folder_lock
    calls = []

    def replace(source, destination):
        calls.append(destination)
        if point == 'between-renames' and len(calls) == 2:
            os._exit(9)  # the array is in place, the sidecar is not
        real_replace(source, destination)

    def write_array(stream, array, **kwargs):
        real_write(stream, array, **kwargs)
        if point == 'after-array':
            os._exit(9)  # the array's temporary file is complete, nothing renamed

    def lock(*args):
        if point == 'before-renames':
            os._exit(9)  # both temporaries... the array's complete, nothing renamed
        return real_lock(*args)

    entry.os.replace, np.lib.format.write_array, entry.folder_lock = replace, write_array, lock
    cache.put('ab' * 32, np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4), {'i': 1})


@pytest.mark.parametrize('point', ['after-array', 'before-renames', 'between-renames'])
def test_a_writer_killed_at_any_point_leaves_nothing_that_is_served_or_kept(tmp_path, point):
    folder = tmp_path / 'cache'
    assert forked(_killed_writer, folder, point) == 9
    temporaries = list(folder.rglob('*.tmp'))
    assert temporaries, 'the kill left no temporary file: the test does not test anything'
    cache = VolumeCache(folder)  # opening the cache removes what the dead writer left
    assert not list(folder.rglob('*.tmp')) and len(cache.swept_on_open) == len(temporaries)
    expected = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    wrong = 0
    array = cache.get('ab' * 32)  # between the renames: an array without sidecar, a plain miss
    wrong += array is not None and not np.array_equal(array, expected)
    cache.put('ab' * 32, expected, {'i': 1})
    wrong += not np.array_equal(cache.get('ab' * 32), expected)
    assert wrong == 0 and cache.check('ab' * 32) is None


def test_fill_removes_temporaries_of_dead_writers_and_keeps_live_ones(tmp_path, capsys):
    cache, served = filled(tmp_path, count=1)
    folder = cache.paths('ab' * 32)[0].parent
    folder.mkdir(exist_ok=True)
    child = os.fork()  # a writer that has ended
    if child == 0:  # pragma: no cover
        os._exit(0)
    os.waitpid(child, 0)
    host = entry._HOST
    gone = folder / f'.x.npy.{host}.{child}.0badf00d.tmp'
    live = folder / f'.y.npy.{host}.{os.getppid()}.0badf00d.tmp'  # pytest's parent: alive
    other_host = folder / f'.z.npy.00000000.{child}.0badf00d.tmp'
    for path in (gone, live, other_host):
        path.write_bytes(b'partial')
    cache.put('ab' * 32, np.zeros((1, 2, 2, 2), np.float32), {})  # a fill sweeps its folder
    assert not gone.exists() and live.exists() and other_host.exists()
    old = time.time() - 2 * entry.STALE_TEMP_SECONDS
    os.utime(other_host, (old, old))
    code, out, _ = run(capsys, 'info', '--cache-dir', str(cache.folder), '--check')
    assert code == 0 and f'removed temporary file {other_host} (older than' in out and not other_host.exists()
    assert 'temporary files    1 left by writers that are gone, removed' in out
    assert live.exists()


_SLOW_FILL = 'slow'


@pytest.fixture(scope='module')
def slow_manifest(tmp_path_factory) -> tuple[Path, Path]:
    """Small files resampled with B-splines onto a large reference: seconds of work per volume."""
    folder = tmp_path_factory.mktemp(_SLOW_FILL)
    manifest = synthetic.write_dataset(folder, num_subjects=6, size=(20, 18, 12))
    reference = sitk.Image(110, 110, 90, sitk.sitkUInt8)  # each C call short: signals are handled between
    reference.SetSpacing((0.19, 0.17, 0.27))
    sitk.WriteImage(reference, str(folder / 'big_reference.nii.gz'))
    return manifest, folder / 'big_reference.nii.gz'


@pytest.mark.parametrize('how', ['SIGKILL', 'SIGTERM'])
def test_cache_workers_end_with_their_parent(tmp_path, slow_manifest, how):
    manifest, reference = slow_manifest
    stderr = (tmp_path / 'stderr').open('w')  # not a pipe: orphans would hold it open
    command = [sys.executable, '-m', 'pyable_tio', 'cache', str(manifest), '--cache-dir', str(tmp_path / 'cache'),
               '--workers', '2', '--no-progress', '--interpolator', 'bspline', '--reference-space', str(reference)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV)
    main = psutil.Process(process.pid)
    deadline = time.time() + 120
    descendants = []
    while time.time() < deadline and process.poll() is None:
        descendants = main.children(recursive=True)
        workers = [p for p in descendants if p.ppid() != process.pid]  # forked by the forkserver
        if len(workers) >= 2:
            break
        time.sleep(0.1)
    assert process.poll() is None, 'the fill ended before the test could interrupt it'
    time.sleep(0.3)  # the workers are resampling now
    os.kill(process.pid, getattr(signal, how))
    code = process.wait(timeout=60)
    gone_by = time.time() + 20
    while time.time() < gone_by and [p for p in descendants if _alive(p)]:
        time.sleep(0.2)
    alive = [p.pid for p in descendants if _alive(p)]
    for pid in alive:  # leave no orphan behind even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert alive == [], f'{len(alive)} of {len(descendants)} child processes outlived the parent'
    if how == 'SIGTERM':
        text = (tmp_path / 'stderr').read_text()
        assert code == 143 and 'terminated; finished cache entries are kept' in text and 'Traceback' not in text
        assert not list((tmp_path / 'cache').rglob('*.tmp'))
    cache = VolumeCache(tmp_path / 'cache')
    assert all(cache.check(key) is None for key, _, _ in cache.entries())


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ------------------------------------------------------------------ disks that refuse writes


def test_cache_command_reports_that_nothing_could_be_written(tmp_path):
    manifest = synthetic.write_dataset(tmp_path / 'data', num_subjects=1, size=(20, 18, 12))
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # ulimit -f 1: no entry fits

    result = cli('cache', str(manifest), '--cache-dir', str(tmp_path / 'cache'), '--workers', '0',
                 '--no-progress', preexec_fn=small_files)
    assert result.returncode == 1, result.stdout + result.stderr
    assert '4 NOT written' in result.stdout
    lines = [line for line in result.stderr.splitlines() if 'not cached: cannot write' in line]
    assert len(lines) == 4 and all('subject "sub-00": file ' in line for line in lines)
    assert 'Traceback' not in result.stderr
    assert VolumeCache(tmp_path / 'cache').stats().entries == 0


def test_training_on_a_read_only_cache_warns_once_and_serves_right_arrays(tmp_path, monkeypatch):
    paths = sources(tmp_path / 'data', 3)
    cache = VolumeCache(tmp_path / 'cache')
    grid = Grid.from_image(sitk.ReadImage(str(paths[0])))
    served = Served(pt.reader.GridReader(grid, 'image', 's', cache=cache), paths)

    def read_only(*args, **kwargs):
        raise OSError(30, 'Read-only file system')

    monkeypatch.setattr(entry.os, 'replace', read_only)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(2):
            served.load_all()
    messages = [str(w.message) for w in caught if 'pyable-tio cache' in str(w.message)]
    assert len(messages) == 1 and 'Read-only file system' in messages[0] and 'serving volumes from memory' in messages[0]
    assert served.wrong == 0 and cache.stats().failed_writes == 6 and cache.stats().entries == 0


def test_an_entry_that_cannot_be_replaced_is_reported_once(tmp_path):
    cache, served = filled(tmp_path, count=1)
    _, array_path, sidecar_path = entry_paths(cache, served, served.paths[0])
    array_path.unlink()
    array_path.mkdir()  # a directory in the way
    (array_path / 'x').write_text('not the cache\'s')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(4):
            served.load(served.paths[0])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and 'cannot be removed' in messages[0], messages
    assert served.wrong == 0 and (array_path / 'x').exists()


def test_recovery_warnings_are_one_clean_line_each(tmp_path):
    cache, served = filled(tmp_path, count=2)
    for path in served.paths:
        array_path = entry_paths(cache, served, path)[1]
        array_path.write_bytes(array_path.read_bytes()[:-10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        served.load_all()
    shown = [warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught]
    assert len(shown) == 2 and served.wrong == 0
    for text in shown:  # what Python prints: one line, no source line under it
        assert text.count('\n') == 1 and text.startswith('pyable-tio:0: RuntimeWarning: pyable-tio cache: entry ')
        assert 'truncated' in text


# ------------------------------------------------------------------ staleness tricks


@pytest.mark.parametrize('trick', ['same-size-mtime', 'rename-over', 'copy-p-over'])
def test_a_source_changed_behind_the_caches_back_is_never_served_stale(tmp_path, trick):
    cache, served = filled(tmp_path, count=2)
    target, other = served.paths
    stat = target.stat()
    if trick == 'same-size-mtime':
        image = sitk.ReadImage(str(target))
        sitk.WriteImage(image * -1.0 + 0.0, str(target.with_suffix('.tmp.nii.gz')))
        data = target.with_suffix('.tmp.nii.gz').read_bytes()
        data = data + bytes(max(0, stat.st_size - len(data)))
        target.write_bytes(data[: stat.st_size] if len(data) >= stat.st_size else data)
    elif trick == 'rename-over':
        os.replace(shutil.copy2(other, tmp_path / 'copy.nii.gz'), target)
    else:
        shutil.copy2(other, target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    try:
        served.expected[target] = served.reader.read(target)
    except pt.LoadError:
        pytest.skip('the truncated rewrite is unreadable, nothing to serve')
    fresh_process()
    served.load_all()
    assert served.wrong == 0, f'{served.wrong} wrong arrays of {served.loads}'


# ------------------------------------------------------------------ concurrent fillers

def _filler(folder: Path, max_bytes: int, wrong_file: Path) -> None:
    warnings.simplefilter('error')  # a filler must never see a damaged entry
    cache = VolumeCache(folder, max_bytes=max_bytes or None)
    wrong = 0
    for _ in range(3):
        for i in range(12):
            key = f'{i:02x}' * 32
            expected = np.full((1, 8, 8, 8), i, np.float32)
            array = cache.get(key)
            if array is None:
                cache.put(key, expected, {'i': i})
            else:
                wrong += not np.array_equal(array, expected)
    wrong_file.write_text(str(wrong))


@pytest.mark.parametrize('max_bytes', [0, 40_000])
def test_concurrent_fillers_never_serve_a_wrong_array(tmp_path, max_bytes):
    folder = tmp_path / 'cache'
    VolumeCache(folder)
    children = []
    for i in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                _filler(folder, max_bytes, tmp_path / f'wrong-{i}')
                os._exit(0)
            except BaseException:
                os._exit(70)
        children.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    assert codes == [0, 0, 0]
    assert sum(int((tmp_path / f'wrong-{i}').read_text()) for i in range(3)) == 0
    cache = VolumeCache(folder)
    assert all(cache.check(key) is None for key, _, _ in cache.entries())
    assert not list(folder.rglob('*.tmp'))
    if max_bytes:
        assert cache.stats().bytes <= max_bytes


# ------------------------------------------------------------------ bad manifests


def test_deeply_nested_manifests_are_manifest_errors(tmp_path, capsys):
    data = tmp_path / 'data'
    manifest = json.loads(synthetic.write_dataset(data, num_subjects=2, size=SIZE).read_text())
    text = json.dumps(manifest).replace('["sub-00_t1.nii.gz"', '[' * 1000 + '"sub-00_t1.nii.gz"' + ']' * 999, 1)
    (data / 'deep.json').write_text(text)
    (data / 'deep.csv').write_text(
        'id,image_paths\nsub-00,"' + '[' * 1000 + 'sub-00_t1.nii.gz' + ']' * 1000 + '"\nsub-01,sub-01_t1.nii.gz\n'
    )
    for name in ('deep.json', 'deep.csv'):
        for command in (['validate'], ['cache', '--cache-dir', str(tmp_path / 'cache'), '--workers', '0']):
            code, _, err = run(capsys, command[0], str(data / name), *command[1:])
            assert code == 1 and 'Traceback' not in err and 'RecursionError' not in err
            assert 'subject "sub-00"' in err and 'field "images"' in err, err
            assert f'file {data / name}' in err and 'too deep' in err
    with pytest.raises(pt.ManifestError, match='subject "sub-00".*nested too deeply'):
        pt.read_manifest(data / 'deep.csv')


def test_a_4d_image_is_refused_for_its_subject_only(tmp_path, capsys):
    data = tmp_path / 'data'
    manifest_path = synthetic.write_dataset(data, num_subjects=2, size=SIZE)
    volumes = [sitk.GetImageFromArray(np.random.rand(8, 10, 12).astype(np.float32)) for _ in range(3)]
    sitk.WriteImage(sitk.JoinSeries(volumes), str(data / 'fourd.nii.gz'))
    manifest = json.loads(manifest_path.read_text())
    manifest['sub-00']['images'].append('fourd.nii.gz')
    (data / 'fourd.json').write_text(json.dumps(manifest))
    code, out, err = run(capsys, 'validate', str(data / 'fourd.json'))
    assert code == 1 and '1 valid of 2 listed' in out
    assert f'subject "sub-00": field "images": file {data / "fourd.nii.gz"}: unsupported image' in err
    code, out, err = run(capsys, 'cache', str(data / 'fourd.json'), '--cache-dir', str(tmp_path / 'cache'),
                         '--workers', '0', '--no-progress')
    assert code == 1 and '4 volume(s)' in out
    cache = VolumeCache(tmp_path / 'cache')
    assert cache.stats().entries == 4  # sub-01: t1, t2, roi, labels
    good = pt.subjects_from_manifest(manifest_path, cache_dir=cache)[1]
    fresh = pt.subjects_from_manifest(manifest_path)[1]
    good.load()
    fresh.load()
    wrong = sum(not np.array_equal(good[k].data, fresh[k].data) for k in fresh.get_images_dict(intensity_only=False))
    assert wrong == 0 and cache.counts['hits'] == 4


def test_a_directory_given_as_an_image_gives_one_line_without_hdf5_noise(tmp_path, capfd):
    data = tmp_path / 'data'
    manifest = json.loads(synthetic.write_dataset(data, num_subjects=1, size=SIZE).read_text())
    (data / 'adir').mkdir()
    manifest['sub-00']['images'].append('adir')
    (data / 'dir.json').write_text(json.dumps(manifest))
    code, _, err = run(capfd, 'validate', str(data / 'dir.json'))  # capfd: C-level output too
    assert code == 1 and 'HDF5' not in err and 'WARNING' not in err, err
    assert err.strip().splitlines() == [
        f'{data / "dir.json"}: subject "sub-00": field "images": file {data / "adir"}: folder {data / "adir"}'
        ' holds no DICOM series',
        '1 problem found',
    ]


def test_a_deeply_nested_json_manifest_names_the_line_and_column(tmp_path):
    from pyable_tio.manifest.formats import _too_deep

    path = tmp_path / 'deep.json'
    path.write_text('{\n  "sub-01": {\n    "images": ' + '[' * 150 + ']' * 150 + '}}')
    # Depth passes 100 at the 99th "[" of line 3, after the 14 characters of '    "images": '.
    assert _too_deep(path) == (f'subject "sub-01": field "images": file {path}:'
                               ' nested 152 brackets deep from line 3 column 113: too deep to read')
