"""The QA sheet's entry point: load every subject as the loader delivers it, score and draw it
(in parallel processes), compare intensities across subjects, sort worst first and write the
sheet (:mod:`pyable_tio.qa.sheet`).

Example:
    >>> import pyable_tio as pt
    >>> report = pt.qa_sheet('manifest.json', out='qa.html', cache_dir='cache', workers=4)  # doctest: +SKIP
    >>> report.subjects[0].id  # the worst subject  # doctest: +SKIP
    'sub-07'
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..io import backend
from ..errors import ManifestError, PyableTioError, short_error
from ..manifest import ManifestSource
from ..plan import PlanEntry, SubjectPlan
from . import render, scores
from .shift import channel_shift
from .row import SubjectQA
from .scores import Finding
from .views import views_of


@dataclass(frozen=True)
class QAReport:
    """What :func:`qa_sheet` wrote: the subjects worst first, the problems, the files.

    Example:
        >>> report = qa_sheet('manifest.json')  # doctest: +SKIP
        >>> [s.id for s in report.subjects if s.worst >= 1]  # doctest: +SKIP
        ['sub-03']
    """

    source: str
    subjects: tuple[SubjectQA, ...]
    problems: tuple[str, ...]
    html: Path
    csv: Path
    json: Path


def qa_sheet(
    source: ManifestSource,
    out: str | os.PathLike = 'qa.html',
    *,
    workers: int = 0,
    progress: bool = False,
    **options: Any,
) -> QAReport:
    """Write a QA sheet of every subject of ``source``, worst first: HTML, CSV and JSON.

    Each subject is loaded as :func:`pyable_tio.subjects_from_manifest` delivers it with
    ``options`` (reference, orientation, alignment, preprocessing, ``cache_dir``: a warm cache
    is read, not recomputed), scored (:mod:`pyable_tio.qa.scores`) and drawn: three views
    through the centroid of its label maps/ROIs (the volume centre without any) per channel,
    with every label map and ROI as a coloured contour and patient directions on the edges.

    Args:
        source: Anything :func:`pyable_tio.read_manifest` accepts.
        out: The HTML file; the CSV and JSON of the same scores go beside it (``qa.csv``,
            ``qa.json``).
        workers: Processes drawing subjects in parallel (0 or 1: this process).
        progress: Show a progress bar.
        **options: Keyword arguments of :func:`pyable_tio.subjects_from_manifest`.

    Returns:
        A :class:`QAReport`; subjects that failed to load are on top, with their problem.

    Raises:
        ManifestError: no subject could be built.
        MissingDependencyError: Pillow is not installed (``pip install "pyable-tio[qa]"``).

    Example:
        >>> report = qa_sheet('sample_manifest.json', out='qa.html')  # doctest: +SKIP
        >>> report.html.name, report.csv.name  # doctest: +SKIP
        ('qa.html', 'qa.csv')
    """
    from ..subjects import subjects_from_manifest
    from . import sheet

    render.pillow()  # a missing extra is said before any file is read
    options.pop('stack_channels', None)  # channels are drawn one by one either way
    problems: list[str] = []
    try:
        subjects = subjects_from_manifest(source, **options)
    except ManifestError as error:
        subjects = getattr(error, 'subjects', [])
        if not subjects:
            raise
        problems = list(error.problems)
    plans = [subject.plan for subject in subjects]
    rows = list(assess_all(plans, _cache_of(subjects), workers, progress))
    rows = sort_rows(compare_intensities(rows))
    paths = sheet.write_sheet(rows, problems, Path(out), source=_describe(source))
    return QAReport(_describe(source), tuple(rows), tuple(problems), *paths)


def _cache_of(subjects: Sequence[Any]) -> Any:
    """The volume cache the subjects' readers use (None without ``cache_dir``)."""
    for subject in subjects:
        for image in subject.get_images(intensity_only=False):
            cache = getattr(image.reader, 'cache', None)
            if cache is not None:
                return cache
    return None


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    named = getattr(source, 'source', None)  # a Manifest (a shard of a file) names its file
    return str(named) if named else f'{type(source).__name__} manifest'


def sort_rows(rows: Sequence[SubjectQA]) -> list[SubjectQA]:
    """Worst first (failed loads on top), ties by id.

    Example:
        >>> [r.id for r in sort_rows([SubjectQA('a', (), ()), SubjectQA('b', (), (), problem='x')])]
        ['b', 'a']
    """
    return sorted(rows, key=lambda row: (-row.worst, row.id))


def compare_intensities(rows: Sequence[SubjectQA]) -> list[SubjectQA]:
    """Add each channel's robust z-scores of median and spread against the other subjects.

    Example:
        >>> rows = compare_intensities(rows)  # doctest: +SKIP
    """
    by_channel: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        for name in row.statistics:
            by_channel[name].append(i)
    extra: dict[int, list[Finding]] = defaultdict(list)
    for name, members in by_channel.items():
        for position, measure in enumerate(('median', 'spread')):
            z = scores.robust_z([rows[i].statistics[name][position] for i in members])
            for i, value in zip(members, z):
                extra[i].append(scores.intensity_finding(name, measure, float(value)))
    return [replace(row, findings=row.findings + tuple(extra[i])) if extra[i] else row for i, row in enumerate(rows)]


# ------------------------------------------------------------------ per subject


def assess_all(plans: Sequence[SubjectPlan], cache: Any, workers: int, progress: bool) -> Iterator[SubjectQA]:
    """:func:`assess` of every plan, in ``workers`` processes (0 or 1: here), with a progress bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(plans), desc='qa', unit='subject', disable=not progress or not plans)
    try:
        if workers <= 1 or len(plans) <= 1:
            for plan in plans:
                yield assess(plan, cache)
                bar.update()
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # ITK's thread pool does not survive fork (as pyable-tio cache): forkserver or spawn.
        method = 'forkserver' if 'forkserver' in multiprocessing.get_all_start_methods() else 'spawn'
        context = multiprocessing.get_context(method)
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = [pool.submit(assess, plan, cache) for plan in plans]
            try:
                for future in as_completed(futures):
                    yield future.result()
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        bar.close()


def _init_worker(threads: int) -> None:
    import signal

    import SimpleITK as sitk
    import torch

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def _channel_name(entry: PlanEntry) -> str:
    return entry.name or f'image {entry.index}'


def _label_name(entry: PlanEntry) -> str:
    return f'{entry.key} ({entry.name})' if entry.name else entry.key


def assess(plan: SubjectPlan, cache: Any = None, draw: bool = True) -> SubjectQA:
    """Load one subject onto its grid, score it and draw its thumbnails.

    Args:
        plan: The subject's plan (``subject.plan``).
        cache: The volume cache its files are read through, or None.
        draw: Make the PNG thumbnails (False: scores only).

    Example:
        >>> row = assess(subjects[0].plan)  # doctest: +SKIP
        >>> [f.check for f in row.findings]  # doctest: +SKIP
        ['channel_shift', 'in_foreground', 'in_grid', 'label_values', ...]
    """
    from ..subjects import subject_from_plan

    start = time.perf_counter()
    grid = plan.grid.as_3d()
    words = (f'grid {" x ".join(map(str, grid.size))} voxels of {" x ".join(f"{s:.3g}" for s in grid.spacing)} mm'
             f' (x, y, z), {grid.orientation()}{"" if grid.is_axis_aligned() else " oblique"};'
             f' reference {_short(plan.reference_used)}')
    try:
        subject = subject_from_plan(plan, cache)
        subject.load()
        channels, labels = [], []
        for key in plan.keys():
            entries, data = plan.entries_of(key), subject[key].data.numpy()
            if entries[0].role == backend.ROLE_IMAGE:
                channels += [(entry, data[i]) for i, entry in enumerate(entries)]
            else:
                labels.append((entries[0], data[0]))
    except (PyableTioError, OSError, RuntimeError, ValueError) as error:
        problem = short_error(error) if not isinstance(error, PyableTioError) else str(error)
        return SubjectQA(plan.id, (), (), grid=words, problem=problem, seconds=time.perf_counter() - start)
    spacing = grid.spacing[::-1]  # D, H, W
    reference = next((i for i, (e, _) in enumerate(channels) if str(e.source) == str(plan.reference_used)), 0)
    reference_volume = channels[reference][1]
    findings: list[Finding] = []
    for i, (entry, volume) in enumerate(channels):
        if i != reference:
            shift, nmi = channel_shift(reference_volume, volume, spacing)
            findings.append(scores.shift_finding(_channel_name(entry), shift, nmi))
    image_foreground = scores.foreground(reference_volume, spacing)
    for entry, volume in labels:
        name = _label_name(entry)
        if entry.filler:
            continue
        if volume.any():  # an empty one (out of the grid?) has nothing to match; in_grid says where it is
            shift, nmi = channel_shift(reference_volume, volume.astype(np.float32), spacing, outside_zero=False)
            findings.append(scores.shift_finding(name, shift, nmi, check='label_shift'))
        inside = scores.in_foreground(volume, image_foreground, name)
        if inside is not None:
            findings.append(inside)
        if entry.preprocessing is None:  # a skull strip's mask is made on the grid's image
            findings.append(scores.in_grid_finding(name, scores.share_in_grid(entry, plan.grid)))
        findings.append(scores.label_values(volume, name))
    seen = set()
    for entry in plan.entries:
        if not entry.filler and entry.source not in seen:
            seen.add(entry.source)
            item = _channel_name(entry) if entry.role == backend.ROLE_IMAGE else _label_name(entry)
            findings += scores.header_findings(entry, item)
    statistics = {_channel_name(e): scores.intensity_statistics(v) for e, v in channels}
    overlays = [(_label_name(e), v) for e, v in labels if not e.filler]  # a filler is all zeros
    thumbnails = []
    if draw:
        views = views_of(grid.affine_zyx(), centre_of([v for _, v in overlays], reference_volume.shape))
        for i, (entry, volume) in enumerate(channels):
            caption = f'{_channel_name(entry)}{" (reference)" if i == reference else ""}: {Path(entry.source).name}'
            thumbnails.append((caption, render.channel_png(volume, overlays, views)))
    return SubjectQA(plan.id, tuple(findings), tuple(thumbnails), tuple(n for n, _ in overlays), words,
                     statistics, None, time.perf_counter() - start)


def _short(reference: str) -> str:
    """A reference file's name (the sheet names files, not folders); a description as it is."""
    path = Path(reference)
    return path.name if path.is_file() else reference


def centre_of(labels: Sequence[np.ndarray], shape: Sequence[int]) -> tuple[int, int, int]:
    """The (D, H, W) voxel nearest the centroid of all labels' non-zero voxels, else the centre.

    Example:
        >>> label = np.zeros((4, 6, 8)); label[1, 2, 3] = 1
        >>> centre_of([label], label.shape), centre_of([], label.shape)
        ((1, 2, 3), (2, 3, 4))
    """
    total, count = np.zeros(3), 0
    for label in labels:
        mask = label != 0
        voxels = int(mask.sum())
        if voxels:
            # Per-axis profiles: three reductions, not the coordinates of every voxel.
            for axis in range(3):
                profile = mask.sum(axis=tuple(a for a in range(3) if a != axis))
                total[axis] += float(profile @ np.arange(len(profile)))
            count += voxels
    if count == 0:
        return tuple(int(n) // 2 for n in shape)
    return tuple(int(round(v)) for v in total / count)
