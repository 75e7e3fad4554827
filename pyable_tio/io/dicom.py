"""DICOM series: a folder of slice files as one image.

A manifest entry may name a folder of DICOM files. With one series in it, that series is the
image. With several, the entry must choose one by its SeriesInstanceUID (0020|000e): in JSON
or a dict ``{"path": folder, "series": UID}``, in a CSV cell ``folder#UID``; both become the
same *series locator* path ``folder#UID``, which every reader of the package understands.
Never the first series silently: without a choice the error lists every series with its
description and number of files.

Headers are read from the series' first and last files only (no voxels), with the geometry
ITK's series reader gives the full volume: size (columns, rows, files), spacing between slices
from the first and last slice positions, direction and origin of the first slice.

Example:
    >>> [s.describe() for s in list_series('/data/sub-01/dicom')]  # doctest: +SKIP
    ['1.2.840.1.1 "T1 MPRAGE" (176 files)', '1.2.840.1.2 "T2 SPACE" (176 files)']
    >>> image = read_series(Path('/data/sub-01/dicom#1.2.840.1.1'))  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import DICOM_SLICE_GAP_TOLERANCE
from .identity import folder_listing

#: Separates the folder from the SeriesInstanceUID in a series locator (``folder#UID``).
SERIES_SEPARATOR = '#'
_DESCRIPTION_TAG = '0008|103e'
_POSITION_TAG = '0020|0032'  # ImagePositionPatient


class SeriesError(ValueError, RuntimeError):
    """A folder without a unique DICOM series, or a series UID the folder lacks.

    A ``ValueError`` (a bad manifest entry) that is also a ``RuntimeError``, like SimpleITK's
    read errors, so that every caller reporting unreadable files reports it too, whole.

    Example:
        >>> series_files('/data/dicom')  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        pyable_tio.io.dicom.SeriesError: folder /data/dicom holds 2 DICOM series: ...
    """


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series of a folder.

    Attributes:
        uid: SeriesInstanceUID.
        description: SeriesDescription (0008|103e), ``""`` when absent.
        files: Slice files in ITK's order (sorted along the slice normal).

    Example:
        >>> SeriesInfo('1.2.3', 'T1', ('a.dcm', 'b.dcm')).describe()
        '1.2.3 "T1" (2 files)'
    """

    uid: str
    description: str
    files: tuple[str, ...]

    def describe(self) -> str:
        """``UID "description" (N files)``."""
        return f'{self.uid} "{self.description}" ({len(self.files)} files)'


@dataclass(frozen=True)
class SeriesHeader:
    """Header of a whole series with the getters of ``sitk.ImageFileReader`` that the package uses.

    Example:
        >>> header = read_series_header(Path('/data/dicom'))  # doctest: +SKIP
        >>> header.GetSize()  # (columns, rows, slices)  # doctest: +SKIP
        (256, 256, 176)
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_id: int
    components: int

    def GetSize(self) -> tuple[int, ...]:  # noqa: N802 - SimpleITK's spelling
        """Size in voxels (x, y, z), z being the number of slices."""
        return self.size

    def GetSpacing(self) -> tuple[float, ...]:  # noqa: N802
        """Spacing in mm (x, y, z); z is the distance between slice positions."""
        return self.spacing

    def GetOrigin(self) -> tuple[float, ...]:  # noqa: N802
        """LPS position in mm of the first slice's first voxel."""
        return self.origin

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        """Row-major direction cosines (x,y,z columns) of the first slice."""
        return self.direction

    def GetPixelID(self) -> int:  # noqa: N802
        """SimpleITK pixel type id of the slices."""
        return self.pixel_id

    def GetDimension(self) -> int:  # noqa: N802
        """Number of dimensions (3)."""
        return len(self.size)

    def GetNumberOfComponents(self) -> int:  # noqa: N802
        """Components per voxel."""
        return self.components


def split_locator(path: str | os.PathLike) -> tuple[Path, str | None] | None:
    """``(folder, uid)`` when ``path`` is a DICOM source, else None (a plain file).

    A folder gives ``(folder, None)``; ``folder#UID`` gives ``(folder, UID)`` when no file of
    that exact name exists and ``folder`` is a folder.

    Example:
        >>> split_locator('/data/dicom#1.2.3')  # doctest: +SKIP
        (PosixPath('/data/dicom'), '1.2.3')
    """
    path = Path(path)
    if path.is_dir():
        return path, None
    if SERIES_SEPARATOR in path.name and not path.exists():
        folder, _, uid = str(path).rpartition(SERIES_SEPARATOR)
        if uid and Path(folder).is_dir():
            return Path(folder), uid
    return None


def locator(folder: str | os.PathLike, uid: str) -> Path:
    """The path that names series ``uid`` of ``folder`` (``folder#UID``).

    Example:
        >>> locator('/data/dicom', '1.2.3')
        PosixPath('/data/dicom#1.2.3')
    """
    uid = str(uid).strip()
    if not uid or SERIES_SEPARATOR in uid or os.sep in uid:
        raise ValueError(f'a series UID looks like "1.2.840.113619.2.55", got {uid!r}')
    return Path(f'{os.fspath(folder).rstrip(os.sep)}{SERIES_SEPARATOR}{uid}')


def exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an existing file, folder, or series locator of an existing folder.

    Example:
        >>> exists('/data/dicom#1.2.3')  # doctest: +SKIP
        True
    """
    return Path(path).exists() or split_locator(path) is not None


def path_problem(path: str | os.PathLike) -> str | None:
    """What keeps ``path`` from being read, or None when it exists (see :func:`exists`).

    A path the operating system refuses (a name or a whole path longer than it allows) is a
    problem of that path, said in words, not an ``OSError`` that stops every other check.

    Example:
        >>> path_problem('/tmp/' + 'x' * 300 + '.nii.gz')
        'file name of 307 characters, longer than this file system allows (255)'
    """
    try:
        return None if exists(path) else 'file not found'
    except OSError as error:
        return os_problem(path, error)


def os_problem(path: str | os.PathLike, error: OSError) -> str:
    """One line for an ``OSError`` met on ``path`` (too long, no permission, ...).

    Example:
        >>> os_problem('/data/t1.nii.gz', PermissionError(13, 'Permission denied'))
        'cannot read it: Permission denied'
    """
    if error.errno == errno.ENAMETOOLONG:
        text = os.fspath(path)
        longest = max(Path(text).parts, key=len, default='')
        name_max, path_max = _limit('PC_NAME_MAX', 255), _limit('PC_PATH_MAX', 4096)
        if len(longest) > name_max:
            return f'file name of {len(longest)} characters, longer than this file system allows ({name_max})'
        return f'path of {len(text)} characters, longer than this file system allows ({path_max})'
    return f'cannot read it: {error.strerror or error}'


def _limit(name: str, default: int) -> int:
    try:
        return int(os.pathconf('/', name))
    except (OSError, ValueError, AttributeError):
        return default


def list_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """Every DICOM series directly in ``folder`` (not its sub-folders).

    Example:
        >>> [s.uid for s in list_series('/data/dicom')]  # doctest: +SKIP
        ['1.2.840.1.1']
    """
    folder = str(folder)
    listing = _listing(folder)
    found = []
    for uid in _series_ids(folder, listing):
        files = _series_files(folder, uid, listing)
        found.append(SeriesInfo(uid, _description(files[0], listing) if files else '', files))
    return found


def series_files(path: str | os.PathLike) -> tuple[str, ...]:
    """The slice files of the series ``path`` names (a folder with one series, or ``folder#UID``).

    Raises:
        SeriesError: no series in the folder, several series and no choice (listing them), or
            a UID that is not in the folder (listing the ones that are).
    """
    split = split_locator(path)
    if split is None:
        raise SeriesError(f'{path} is neither a folder nor a "folder#UID" series locator')
    folder, uid = split
    listing = _listing(str(folder))
    if uid is not None:
        files = _series_files(str(folder), uid, listing)
        if files:
            return files
    found = list_series(folder)
    if not found:
        raise SeriesError(f'folder {folder} holds no DICOM series')
    if uid is None and len(found) == 1:
        return found[0].files
    listed = '; '.join(s.describe() for s in found)
    if uid is None:
        raise SeriesError(
            f'folder {folder} holds {len(found)} DICOM series: {listed}. Choose one with'
            f' {{"path": "{folder}", "series": "<UID>"}} (JSON) or "{folder}#<UID>" (CSV)'
        )
    raise SeriesError(f'folder {folder} has no DICOM series {uid}; it holds: {listed}')


def read_series(path: str | os.PathLike) -> sitk.Image:
    """The series ``path`` names, read whole with ``sitk.ImageSeriesReader``.

    Raises:
        SeriesError: as :func:`series_files`, or slices not evenly spaced (:func:`check_spacing`).
        RuntimeError: If SimpleITK cannot read the files.
    """
    files = series_files(path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()  # each slice's position, read with its voxels
    image = reader.Execute()
    check_spacing(path, files, _positions_of(reader, image, len(files)))
    return image


def check_spacing(path: str | os.PathLike, files: tuple[str, ...], positions: Sequence[float] | None = None) -> None:
    """Refuse a series whose slices are not evenly spaced along their normal (a missing slice).

    ITK's series reader stacks the slices at the average distance between the first and the
    last (it only logs "missing slices"): with one slice missing of 189 at 1.5 mm, it gives
    1.508 mm and puts slices up to 0.75 mm off. ``positions`` (mm along the slice normal, in
    ``files`` order) are read from each file's header when not given (remembered while the
    folder's files do not change: about 0.2 s for 189 slices).

    Raises:
        SeriesError: naming the series, the gap, the slices around it and the fix.

    Example:
        >>> check_spacing('/data/dicom', series_files('/data/dicom'))  # doctest: +SKIP
    """
    if len(files) < 3:
        return
    if positions is None:
        positions = _slice_positions(tuple(files), _listing(os.path.dirname(files[0])))
    positions = np.asarray(positions, dtype=float)
    steps = np.diff(positions)
    usual = float(np.median(np.abs(steps)))
    if usual == 0:
        return  # stacked at one position (e.g. a time series): ITK's own error, if any
    off = np.abs(np.abs(steps) - usual) > DICOM_SLICE_GAP_TOLERANCE * usual
    if not off.any():
        return
    k = int(np.argmax(np.abs(np.abs(steps) - usual)))
    worst = abs(float(steps[k]))
    what = f'a gap of {worst:.4g} mm' if worst > usual else f'slices {worst:.4g} mm apart'
    missing = round(worst / usual) - 1 if worst > usual else 0
    hint = f' ({missing} missing slice{"s" if missing != 1 else ""}?)' if missing else ' (an extra or duplicate slice?)'
    raise SeriesError(
        f'DICOM series {path}: slices are not evenly spaced: {what} between slice {k + 1}'
        f' ({os.path.basename(files[k])}) and slice {k + 2} ({os.path.basename(files[k + 1])}),'
        f' where the others are {usual:.4g} mm apart{hint}, in {int(off.sum())} place(s) of'
        f' {len(files)} slices. Read evenly they would be misplaced: export the series again'
        ' complete, or convert it with a tool that keeps slice positions (e.g. dcm2niix) and list'
        ' the NIfTI file'
    )


def read_series_header(path: str | os.PathLike) -> SeriesHeader:
    """Header of the series ``path`` names, from its first and last files (no voxels).

    Matches ``read_series(path)``: ITK places slices at their positions' distance divided by
    the number of gaps and keeps the first slice's (orthogonal) direction.

    Raises:
        SeriesError: as :func:`series_files`.
        RuntimeError: If a file's header cannot be read.

    Example:
        >>> read_series_header('/data/dicom#1.2.3').GetSize()  # doctest: +SKIP
        (256, 256, 176)
    """
    files = series_files(path)
    check_spacing(path, files)
    first = _file_header(files[0])
    if len(files) == 1:  # one (possibly multi-frame) file: its own header is the series'
        return SeriesHeader(
            tuple(first.GetSize()), tuple(first.GetSpacing()), tuple(first.GetOrigin()),
            tuple(first.GetDirection()), first.GetPixelID(), first.GetNumberOfComponents(),
        )
    size = (*first.GetSize()[:2], len(files))
    spacing = list(first.GetSpacing())
    last = _file_header(files[-1])
    gap = np.linalg.norm(np.subtract(last.GetOrigin(), first.GetOrigin())) / (len(files) - 1)
    if gap > 0:
        spacing[2] = float(gap)
    return SeriesHeader(
        tuple(int(n) for n in size), tuple(spacing), tuple(first.GetOrigin()), tuple(first.GetDirection()),
        first.GetPixelID(), first.GetNumberOfComponents(),
    )


def _file_header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


@functools.lru_cache(maxsize=256)
def _description(path: str, listing: tuple) -> str:
    # Remembered per ``listing`` as the series' files: a folder given without a UID is listed
    # on every load, and its one series' description is not worth a header read each time.
    reader = _file_header(path)
    return reader.GetMetaData(_DESCRIPTION_TAG).strip() if reader.HasMetaDataKey(_DESCRIPTION_TAG) else ''


def _listing(folder: str) -> tuple[tuple[str, int, int, int, int], ...]:
    """Names and stat signatures of the folder's files: the memo key of its series."""
    return folder_listing(folder)


def _positions_of(reader: sitk.ImageSeriesReader, image: sitk.Image, count: int) -> list[float] | None:
    """Each slice's ImagePositionPatient along the volume's slice normal, or None when a slice lacks it."""
    if image.GetDimension() != 3:
        return None
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    positions = []
    for i in range(count):
        if not reader.HasMetaDataKey(i, _POSITION_TAG):
            return None
        try:
            point = [float(v) for v in reader.GetMetaData(i, _POSITION_TAG).split('\\')]
        except ValueError:
            return None
        if len(point) != 3:
            return None
        positions.append(float(normal @ np.asarray(point)))
    return positions


@functools.lru_cache(maxsize=256)
def _slice_positions(files: tuple[str, ...], listing: tuple) -> tuple[float, ...]:
    """Each slice's position along the first slice's normal, in mm (remembered per ``listing``)."""
    first = _file_header(files[0])
    normal = np.asarray(first.GetDirection()).reshape(3, 3)[:, 2]
    return tuple(float(normal @ np.asarray(_file_header(f).GetOrigin())) for f in files)


@functools.lru_cache(maxsize=64)
def _series_ids(folder: str, listing: tuple) -> tuple[str, ...]:
    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder))


@functools.lru_cache(maxsize=256)
def _series_files(folder: str, uid: str, listing: tuple) -> tuple[str, ...]:
    # GDCM parses every file of the folder; a reader asks on every load, so remember the answer
    # while no file of the folder is added, removed or rewritten (``listing``).
    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
