"""The ``pyable-tio`` command line: ``validate``, ``cache``, ``qa`` and ``info``.

Exit codes: 0 success, 1 problems found (one line each on stderr), 2 bad command line,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM). User mistakes never print a traceback.

Example:
    $ pyable-tio validate manifest.json
    $ pyable-tio cache manifest.json --cache-dir /scratch/cache --workers 4 --max-bytes 50G
    $ pyable-tio cache manifest.json --cache-dir /scratch/cache --preprocess n4,skullstrip --shard 0/10
    $ pyable-tio qa manifest.json --cache-dir /scratch/cache --out qa.html
    $ pyable-tio info --cache-dir /scratch/cache
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import signal
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import BrokenExecutor
from pathlib import Path
from typing import TYPE_CHECKING

# Only what parsing needs is imported here: --help, --version and a usage error must not wait
# seconds for torch, TorchIO and SimpleITK (benchmarks/bench_cli_start.py). Each command
# imports its own tools.
from . import args as cli_args
from .args import format_bytes, plural, shard_of
from ..constants import EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEMS, EXIT_TERMINATED, EXIT_USAGE
from ..constants import ALIGN_MODES, DEFAULT_NONFINITE, INTERPOLATORS, LINEAR, MISSING_KEEP, MISSING_MODES
from ..constants import NONFINITE_MODES, ON_ERROR_MODES, ON_ERROR_RAISE, ON_ERROR_SKIP, PREPROCESS_STEP_NAMES
from ..constants import CACHE_WORKERS_MAX, CACHE_WORKERS_MIN_VOLUMES, REFERENCE_FIRST
from ..errors import ManifestError, PyableTioError, subject_of

if TYPE_CHECKING:
    from ..checking.validate import Validation

PROG = 'pyable-tio'
_DTYPES = ('float16', 'float32', 'float64')


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it).

    Example:
        >>> main(['validate', 'manifest.json'])  # doctest: +SKIP
        0
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed by argparse
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        with _sigterm_as_interrupt():
            return args.run(args)
    except KeyboardInterrupt as interrupt:
        resume = '; finished cache entries are kept, run it again to resume' if args.command == 'cache' else ''
        terminated = isinstance(interrupt, Terminated)
        print(f'{PROG}: {"terminated" if terminated else "interrupted"}{resume}', file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except BrokenExecutor:
        print(f'{PROG}: error: a worker process died (out of memory?); try fewer --workers', file=sys.stderr)
        return EXIT_PROBLEMS
    except ManifestError as error:
        _print_problems(error.problems)
        return EXIT_PROBLEMS
    except (PyableTioError, OSError, ValueError) as error:
        print(f'{PROG}: error: {error}', file=sys.stderr)
        return EXIT_PROBLEMS


class Terminated(KeyboardInterrupt):
    """SIGTERM received: shut down exactly as Ctrl-C does."""


class _sigterm_as_interrupt:
    """While active (main thread only), SIGTERM raises :class:`Terminated` instead of killing."""

    def __enter__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)

    def __exit__(self, *exc_info) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    @staticmethod
    def _raise(signum, frame) -> None:
        raise Terminated()


def _manifest_kwargs(args: argparse.Namespace) -> dict:
    """The :func:`_manifest_options` values, named as ``validate`` and ``subjects_from_manifest`` take them."""
    return dict(
        reference=args.reference, reference_space=args.reference_space, root=args.root, missing=args.missing,
        orientation=args.orientation, axis_aligned=args.axis_aligned, align=args.align,
        extra_fields=args.extra_field, nonfinite=args.nonfinite, preprocess=args.preprocess,
    )


def _subject_options(args: argparse.Namespace) -> dict:
    """The ``subjects_from_manifest`` options of a command that loads volumes (``cache``, ``qa``)."""
    import torch

    return dict(
        _manifest_kwargs(args), interpolator=args.interpolator, default_value=args.default_value,
        dtype=getattr(torch, args.dtype),
    )


def _shard(source, args: argparse.Namespace):
    """``source`` restricted to this run's shard (a :class:`Manifest`), or as given without ``--shard``."""
    from ..manifest import Manifest, read_manifest

    if args.shard is None:
        return source
    index, count = args.shard
    manifest = read_manifest(source, root=args.root, check_files=False, extra_fields=args.extra_field)
    return Manifest(tuple(r for r in manifest if shard_of(r.id, count) == index), manifest.source)


# ------------------------------------------------------------------- validate


def _print_validation(report: Validation) -> None:
    def top(counter: Counter, noun: str, limit: int = 4) -> str:
        items = [f'{value} ({plural(count, noun)})' for value, count in counter.most_common(limit)]
        more = len(counter) - limit
        return ', '.join(items) + (f', ... {more} more' if more > 0 else '') if items else '-'

    print(f'{report.source}')
    rows = [('subjects', f'{report.subjects} valid of {report.listed} listed')]
    if report.subjects:
        rows += [(f'{name} per subject', top(counter, 'subj.')) for name, counter in report.counts.items()]
        rows += [
            ('spacings x,y,z (mm)', top(report.spacings, 'file')),
            ('orientations', top(report.orientations, 'file')),
            ('reference sizes x,y,z', top(report.reference_sizes, 'subj.')),
        ]
    rows.append(('problems', str(len(report.problems))))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f'  {name:<{width}}  {value}')


def _run_validate(args: argparse.Namespace) -> int:
    from ..checking.headers import SPELLING_CLI
    from ..checking.validate import validate

    check = functools.partial(
        validate, **_manifest_kwargs(args), spelling=SPELLING_CLI, check_data=not args.headers_only,
        progress=args.progress if args.progress is not None else sys.stderr.isatty(),
    )
    reports = [check(source) for source in _sources(args)]
    for report in reports:
        _print_validation(report)
        for note in report.notes:
            print(f'  note: {note}')
        sys.stdout.flush()
        _print_problems(report.problems, prefix=f'{report.source}: ')
    total = sum(len(r.problems) for r in reports)
    if total:
        noun = 'problem' if total == 1 else 'problems'
        print(f'{total} {noun} found', file=sys.stderr)
        tables = all(Path(m).suffix.lower() in ('.csv', '.tsv') for m in args.manifests)
        if tables and len(args.manifests) > 1 and not args.multi_csv:
            print('hint: tables of one multi-CSV manifest need --multi-csv', file=sys.stderr)
        return EXIT_PROBLEMS
    print(f'OK: {sum(r.subjects for r in reports)} subject(s), no problems')
    return EXIT_OK


# ---------------------------------------------------------------------- cache


def _run_cache(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..cache import VolumeCache
    from ..checking.validate import _label
    from ..manifest import Manifest
    from ..reader import GridReader
    from ..subjects import subjects_from_manifest
    from .fill import fill

    cache = VolumeCache(args.cache_dir, max_bytes=args.max_bytes)
    build = functools.partial(subjects_from_manifest, **_subject_options(args), cache_dir=cache)
    jobs, problems, skipped, volumes = [], [], [], set()
    for source in _sources(args):
        source = _shard(source, args)
        if isinstance(source, Manifest) and not source.subjects:
            continue  # no subject of this manifest falls in this shard
        try:
            subjects = build(source)
        except ManifestError as error:
            # One bad file should not keep the other subjects out of the cache.
            subjects = error.subjects
            lines = [f'{_label(source)}: {p}' for p in error.problems]
            if args.on_error == ON_ERROR_SKIP and subjects and None not in map(subject_of, error.problems):
                skipped += lines
            else:
                problems += lines
        for subject in subjects:
            for image in subject.get_images(intensity_only=False):
                if isinstance(image.reader, GridReader):
                    paths = image.path if isinstance(image.path, list) else [image.path]
                    for path in map(str, paths):
                        # A file listed twice on one grid (two subjects, or image and ROI) is
                        # one volume: computed once, not counted as a hit of this very run.
                        volume = (image.reader.entry(path), image.reader.grid)
                        if volume not in volumes:
                            volumes.add(volume)
                            jobs.append((image.reader, path))
    totals: Counter = Counter()
    bar = tqdm(total=len(jobs), desc='caching', unit='volume', disable=args.no_progress or not jobs)
    for counts, problem in fill(jobs, cli_args.cache_workers(args.workers, len(jobs))):
        totals.update(counts)
        if problem is not None:
            problems.append(problem)
        bar.update()
    bar.close()
    stats = cache.stats()
    failed = f', {totals["failed_writes"]} NOT written (see below)' if totals['failed_writes'] else ''
    print(
        f'{len(jobs)} volume(s): {totals["hits"]} hit(s), {totals["misses"]} miss(es),'
        f' {totals["recovered"]} recovered, {format_bytes(totals["written_bytes"])} written{failed};'
        f' cache {cache.folder}: {plural(stats.entries, "entry")}, {format_bytes(stats.bytes)}'
    )
    if skipped:
        _print_problems(skipped, prefix='skipped (--on-error skip): ')
        print(f'{PROG}: warning: {len(skipped)} problem(s) left their subjects out of the cache', file=sys.stderr)
    if problems:
        _print_problems(problems)
        return EXIT_PROBLEMS
    return EXIT_OK


# ------------------------------------------------------------------------- qa


def _run_qa(args: argparse.Namespace) -> int:
    from ..checking.validate import _label
    from ..constants import QA_CROSSED
    from ..manifest import Manifest
    from ..qa.report import qa_sheet

    sources = _sources(args)
    if len(sources) != 1:
        print(f'{PROG} qa: error: one manifest per sheet (the tables of one multi-CSV manifest: --multi-csv)',
              file=sys.stderr)
        return EXIT_USAGE
    source = _shard(sources[0], args)
    if isinstance(source, Manifest) and not source.subjects:
        print('no subject falls in this shard')
        return EXIT_OK
    workers = args.workers if args.workers is not None else min(CACHE_WORKERS_MAX, os.cpu_count() or 1)
    report = qa_sheet(source, args.out, workers=workers, progress=not args.no_progress,
                      cache_dir=args.cache_dir, **_subject_options(args))
    crossed = [row for row in report.subjects if row.worst >= QA_CROSSED]
    print(f'{report.html}: {len(report.subjects)} subject(s), worst first, {len(crossed)} crossing a threshold;'
          f' the same scores in {report.csv.name} and {report.json.name}')
    for row in crossed:
        print(f'  {row.id}: {row.problem if row.problem is not None else row.worst_finding.text}')
    failed = [f'subject "{row.id}": {row.problem}' for row in report.subjects if row.problem is not None]
    if report.problems or failed:
        _print_problems([f'{_label(sources[0])}: {p}' for p in report.problems] + failed)
        return EXIT_PROBLEMS
    return EXIT_OK


# ----------------------------------------------------------------------- info


def versions() -> dict[str, str]:
    """Versions of Python and of the packages pyable-tio uses (``"not installed"`` if absent).

    Example:
        >>> versions()['pyable-tio']  # doctest: +SKIP
        '0.1.0'
    """
    found = {'python': platform.python_version()}
    for name in ('pyable-tio', 'torch', 'torchio', 'SimpleITK', 'numpy', 'pandas', 'monai', 'pyable', 'deepbet'):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = 'not installed'
    return found


def _run_info(args: argparse.Namespace) -> int:
    from ..io import backend

    rows = list(versions().items())
    rows.append(('pyable importable', 'yes' if backend.pyable_available() else 'no'))
    rows.append(('active backend', backend.active_backend()))
    problems = []
    if args.check and args.cache_dir is None:
        print(f'{PROG} info: error: --check needs --cache-dir DIR (the cache to verify)', file=sys.stderr)
        return EXIT_USAGE
    if args.cache_dir is not None:
        from ..cache import VolumeCache

        if not Path(args.cache_dir).is_dir():
            raise ValueError(f'cache folder {args.cache_dir} does not exist')
        cache = VolumeCache(args.cache_dir)
        stats = cache.stats()
        rows += [('cache folder', str(cache.folder)), ('cache entries', str(stats.entries)),
                 ('cache size', format_bytes(stats.bytes))]
        if args.check:
            problems = [
                f'cache entry {key} (of {_entry_source(sidecar)}): {problem}'
                for key, _, sidecar in cache.entries() if (problem := cache.check(key))
            ]
            rows.append(('cache check', f'{len(problems)} bad entr{"y" if len(problems) == 1 else "ies"}'))
            memos = cache.check_sources()
            wrong = [f'source memo {path.name}: {problem}' for path, problem in memos if 'stale' not in problem]
            problems += wrong
            rows.append(('source memos', f'{len(wrong)} bad, {len(memos) - len(wrong)} stale; all removed'))
            swept = cache.swept_on_open + cache.sweep_temporaries()
            for path, reason in swept:
                print(f'removed temporary file {path} ({reason})')
            rows.append(('temporary files', f'{len(swept)} left by writers that are gone, removed'))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f'{name:<{width}}  {value}')
    if problems:
        _print_problems(problems)
        return EXIT_PROBLEMS
    return EXIT_OK


def _entry_source(sidecar: Path) -> str:
    """The source file a cache entry was made from, as its sidecar records it."""
    try:
        source = json.loads(sidecar.read_text(encoding='utf-8')).get('source')
    except (OSError, ValueError, AttributeError, RecursionError):  # any JSON: a damaged entry
        return 'unknown source: unreadable sidecar'
    return str(source) if source else 'unknown source'


# -------------------------------------------------------------------- parsing


def _sources(args: argparse.Namespace) -> list:
    """Each manifest argument on its own, or all of them as one multi-CSV manifest."""
    return [list(args.manifests)] if args.multi_csv else list(args.manifests)


def _print_problems(problems: Sequence[str], prefix: str = '') -> None:
    for problem in problems:
        print(f'{prefix}{problem}', file=sys.stderr)


def _manifest_options(command: argparse.ArgumentParser) -> None:
    """Options of every command that reads manifests (``validate``, ``cache``, ``qa``)."""
    command.add_argument('manifests', nargs='+', metavar='MANIFEST', help='manifest file(s), JSON or CSV')
    command.add_argument('--multi-csv', action='store_true',
                         help='the MANIFEST files are the tables of ONE multi-CSV manifest')
    command.add_argument('--reference', type=cli_args.reference, default=REFERENCE_FIRST,
                         help='reference image of each subject: first (default), largest or an index')
    command.add_argument('--reference-space', metavar='PATH', help='image whose grid every subject uses')
    command.add_argument('--root', metavar='DIR', help='folder relative manifest paths resolve against')
    command.add_argument('--missing', choices=MISSING_MODES, default=MISSING_KEEP,
                         help='subjects that list different ROIs/label maps: keep (default; each has its'
                              ' own), error (they must agree, as a patch queue or batch needs) or empty'
                              ' (fill the missing ones with all-zero label maps)')
    command.add_argument('--extra-field', action='append', default=[], metavar='NAME',
                         help='a manifest field that is extra on purpose though close to a known one'
                              ' (repeatable)')
    command.add_argument('--orientation', type=cli_args.orientation, metavar='CODE',
                         help='reorient reference grids, e.g. LPS or RAS')
    command.add_argument('--axis-aligned', action='store_true', help='axis-aligned grids instead of oblique ones')
    command.add_argument('--align', choices=ALIGN_MODES, help='register images onto the reference first')
    command.add_argument('--nonfinite', choices=NONFINITE_MODES, default=DEFAULT_NONFINITE,
                         help='NaN/Inf voxels: error (default), zero (replace by 0) or keep (as stored)')
    command.add_argument('--preprocess', type=cli_args.steps, metavar='STEPS',
                         help=f'steps run on every image in its native space, e.g. n4,skullstrip'
                              f' (known: {",".join(PREPROCESS_STEP_NAMES)})')


def _loading_options(command: argparse.ArgumentParser, cache_required: bool) -> None:
    """Options of the commands that load every volume (``cache``, ``qa``): as training loads them."""
    command.add_argument('--cache-dir', required=cache_required, metavar='DIR',
                         help='cache folder (created if missing): the cache_dir= training will use' if cache_required
                         else 'read volumes through this cache (a warm one is fast)')
    command.add_argument('--workers', type=cli_args.workers, default=None, metavar='N',
                         help='parallel processes; 0 or 1 runs in this process (default: cache: 0 below'
                              f' {CACHE_WORKERS_MIN_VOLUMES} volumes, where starting workers costs more than'
                              f' it saves, else min({CACHE_WORKERS_MAX}, CPUs); qa: min({CACHE_WORKERS_MAX}, CPUs))')
    command.add_argument('--interpolator', choices=INTERPOLATORS, default=LINEAR)
    command.add_argument('--dtype', choices=_DTYPES, default='float32', help='image dtype')
    command.add_argument('--default-value', type=float, default=0.0, help='image value outside a file')
    command.add_argument('--shard', type=cli_args.parse_shard, metavar='K/N',
                         help='only shard K (0-based) of N: the subjects whose id hashes to K (job arrays)')
    command.add_argument('--no-progress', action='store_true', help='no progress bar')


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description='Manifests of medical images for TorchIO.')
    parser.add_argument('--version', action='version', version=f'{PROG} {versions()["pyable-tio"]}')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    validate_ = commands.add_parser('validate', help='check manifests and every file, and summarise them')
    _manifest_options(validate_)
    bars = validate_.add_mutually_exclusive_group()
    bars.add_argument('--progress', action='store_true', default=None,
                      help='progress bars on stderr (default: only when stderr is a terminal)')
    bars.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars')
    validate_.add_argument('--headers-only', action='store_true',
                           help='skip reading each file completely (truncation, NaN/Inf, non-integer labels)')
    validate_.set_defaults(run=_run_validate)

    cache = commands.add_parser('cache', help='fill the cache of resampled volumes (resumable)')
    _manifest_options(cache)
    _loading_options(cache, cache_required=True)
    cache.add_argument('--max-bytes', type=cli_args.parse_size, metavar='SIZE', help='size limit, e.g. 50G (LRU eviction)')
    cache.add_argument('--on-error', choices=ON_ERROR_MODES, default=ON_ERROR_RAISE,
                       help='subjects with a problem: raise (default; they are listed and the exit code'
                            ' is 1, the good ones are cached all the same) or skip (listed as skipped,'
                            ' exit code 0 when nothing else failed)')
    cache.set_defaults(run=_run_cache)

    qa = commands.add_parser('qa', help='a QA sheet of every subject (HTML, CSV, JSON), worst first')
    _manifest_options(qa)
    _loading_options(qa, cache_required=False)
    qa.add_argument('--out', default='qa.html', metavar='HTML',
                    help='the sheet (default qa.html); the same scores go to .csv and .json beside it')
    qa.set_defaults(run=_run_qa)

    info = commands.add_parser('info', help='versions, backend and cache statistics')
    info.add_argument('--cache-dir', metavar='DIR', help='cache folder to summarise (and verify with --check)')
    info.add_argument('--check', action='store_true', help='verify every cache entry (reads them all)')
    info.set_defaults(run=_run_info)
    return parser
