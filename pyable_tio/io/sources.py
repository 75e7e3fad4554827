"""What a manifest path points at, read faithfully: an image file or a DICOM series.

Every header and voxel read of a manifest entry goes through here, so that DICOM folders,
series locators (``folder#UID``), truncated NIfTI files and non-finite NIfTI voxels are
handled the same way at build time, at load time, in the cache and in ``validate``:

- a folder or ``folder#UID`` is a DICOM series (:mod:`pyable_tio.io.dicom`);
- a NIfTI file is checked cheaply for truncation (a ``stat``, or the gzip trailer) before
  its voxels are read, and float NIfTI voxels are read as stored (SimpleITK would turn NaN
  and +-Inf into 0), with SimpleITK's geometry;
- anything else is ``sitk.ReadImage``.

Example:
    >>> header = read_header('t1.nii.gz')  # doctest: +SKIP
    >>> image = read_image('/data/dicom#1.2.840.1.1')  # doctest: +SKIP
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from . import dicom
from . import nifti
from .native_stderr import hdf5_diagnostics_filtered

#: SimpleITK pixel type of each float NIfTI datatype read by :func:`read_image`.
_FLOAT_PIXELS = {16: sitk.sitkFloat32, 64: sitk.sitkFloat64}


def is_series(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a DICOM series (a folder, or ``folder#UID``).

    Example:
        >>> is_series('t1.nii.gz')
        False
    """
    return dicom.split_locator(path) is not None


def files_of(path: str | os.PathLike) -> tuple[str, ...]:
    """The files holding the data of ``path``: itself, or a series' slice files.

    Raises:
        dicom.SeriesError: For a folder without a unique series (see :func:`dicom.series_files`).

    Example:
        >>> files_of('t1.nii.gz')
        ('t1.nii.gz',)
    """
    return dicom.series_files(path) if is_series(path) else (os.fspath(path),)


def read_header(path: str | os.PathLike) -> sitk.ImageFileReader | dicom.SeriesHeader:
    """A file's header (no voxels), or a whole DICOM series' header.

    Raises:
        RuntimeError: If the header cannot be read.
        dicom.SeriesError: If a folder holds no unique series (the message lists them).
    """
    # An odd file makes ITK's HDF5 reader print its error stack, a folder without series makes
    # GDCM warn: noise before the one-line problem pyable-tio reports.
    with hdf5_diagnostics_filtered():
        if is_series(path):
            return dicom.read_series_header(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    return reader


def check_length(path: str | os.PathLike) -> None:
    """The cheap load-time truncation check (NIfTI; other files pass).

    Raises:
        nifti.TruncatedFileError: naming the bytes held and needed.
        RuntimeError: If the file cannot be read.

    Example:
        >>> check_length('cut.nii.gz')  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        pyable_tio.io.nifti.TruncatedFileError: truncated file: 416 bytes, but its header needs 832 ...
    """
    if nifti.is_nifti(path):
        try:
            nifti.check_length(path)
        except OSError as error:
            raise _unreadable(path, error) from None


def read_image(path: str | os.PathLike) -> sitk.Image:
    """The image ``path`` names, with its voxels as stored.

    Raises:
        nifti.TruncatedFileError: A NIfTI file shorter than its header says.
        dicom.SeriesError: If a folder holds no unique series (the message lists them).
        RuntimeError: If the file or series cannot be read.
    """
    if is_series(path):
        return dicom.read_series(path)
    try:
        header = nifti.read_nifti_header(path) if nifti.is_nifti(path) else None
        if header is not None:
            nifti.check_length(path, header)
    except OSError as error:
        raise _unreadable(path, error) from None
    if header is not None and header.datatype in _FLOAT_PIXELS:
        image = _read_float_nifti(path, header)
        if image is not None:
            return image
    return sitk.ReadImage(str(path))


def _read_float_nifti(path: str | os.PathLike, header: nifti.NiftiHeader) -> sitk.Image | None:
    """SimpleITK's geometry with the stored voxels; None when the layouts do not line up."""
    info = read_header(path)
    size = tuple(info.GetSize())
    components = info.GetNumberOfComponents()
    if info.GetPixelID() != _FLOAT_PIXELS[header.datatype] or components != 1 or len(size) > 3:
        return None  # scaled to another type, vector or 4-D data: SimpleITK's own read
    voxels = nifti.read_voxels(path, header)
    if voxels.size != int(np.prod(size)):
        return None
    # NIfTI stores x fastest: the flat block is a C-order array of shape (..., z, y, x).
    image = sitk.GetImageFromArray(voxels.reshape(size[::-1]))
    image.SetOrigin(info.GetOrigin())
    image.SetSpacing(info.GetSpacing())
    image.SetDirection(info.GetDirection())
    return image


def _unreadable(path: str | os.PathLike, error: OSError) -> RuntimeError:
    if isinstance(error, FileNotFoundError):
        return RuntimeError(f'The file "{path}" does not exist.')  # SimpleITK's words
    return RuntimeError(f'cannot read "{path}": {error.strerror or error}')

