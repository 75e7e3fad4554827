"""Keep the C libraries' diagnostics that are noise out of the terminal.

When ITK probes a file it cannot read (an odd file), each of its image readers tries it in
turn, and the HDF5 one prints about 30 lines of ``HDF5-DIAG`` error stack to the process's
C-level stderr before the one-line error pyable-tio reports anyway; a folder without DICOM
series makes GDCM print a 3-line warning saying so. Python cannot switch HDF5's printing off
through SimpleITK, so the probe's fd 2 is captured and everything but these is written back.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()
_HDF5_START = 'HDF5-DIAG'
_ITK_WARNING = 'WARNING: In '
_GDCM_NO_SERIES = 'itkGDCMSeriesFileNames'


@contextmanager
def hdf5_diagnostics_filtered() -> Iterator[None]:
    """While active, C-level output to fd 2 is held back; on exit it is written back without
    HDF5 error stacks (``HDF5-DIAG`` lines and the indented lines under them).

    Other threads' output to fd 2 during the probe is delayed, never lost. Nested and
    concurrent uses share one capture.

    Example:
        >>> with hdf5_diagnostics_filtered():
        ...     pass
    """
    with _LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            capture = tempfile.TemporaryFile()
        except (OSError, ValueError):
            yield  # no fd 2 to capture (e.g. an embedded interpreter)
            return
        try:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                capture.seek(0)
                kept = strip_hdf5_diagnostics(capture.read().decode(errors='replace'))
                if kept:
                    os.write(2, kept.encode())
        finally:
            os.close(saved)
            capture.close()


def strip_hdf5_diagnostics(text: str) -> str:
    """``text`` without HDF5 error stacks (``HDF5-DIAG`` and the indented lines under it).

    Example:
        >>> strip_hdf5_diagnostics('HDF5-DIAG: Error detected\\n  #000: H5F.c\\n    major: File\\nkept\\n')
        'kept\\n'
    """
    kept, in_stack, in_warning = [], False, False
    for line in text.splitlines(keepends=True):
        if line.startswith(_HDF5_START):
            in_stack = True
            continue
        # ITK's "WARNING: In .../itkGDCMSeriesFileNames.cxx" + "No Series were found" + a blank
        # line: pyable-tio reports the same ("holds no DICOM series") in one line.
        if line.startswith(_ITK_WARNING) and _GDCM_NO_SERIES in line:
            in_warning = True
            continue
        if in_warning:
            in_warning = bool(line.strip())
            continue
        # Stack lines are indented; one of them embeds ctime(), whose newline starts a line with ','.
        if in_stack and (line[:1].isspace() or line.startswith(',')):
            continue
        in_stack = False
        kept.append(line)
    return ''.join(kept)
