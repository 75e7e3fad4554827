"""What SimpleITK's NIfTI reader hides: truncated files and non-finite voxels.

SimpleITK (ITK) reads a ``.nii``/``.nii.gz`` cut short without complaint, filling the missing
voxels with 0, and turns every NaN and +-Inf voxel of a float NIfTI into 0. This module reads
the NIfTI-1/NIfTI-2 header itself (the fixed-size binary header, never the voxels) to check a
file's length cheaply, and reads float voxel blocks itself so that they arrive as stored.
Geometry always comes from SimpleITK's header read (qform/sform choice, LPS).

Example:
    >>> header = read_nifti_header('t1.nii.gz')  # doctest: +SKIP
    >>> header.dims, header.data_bytes, header.vox_offset  # doctest: +SKIP
    ((48, 40, 32), 122880, 352)
    >>> check_length('t1.nii.gz')  # raises TruncatedFileError when cut short  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import DEFLATE_MAX_RATIO, DEFLATE_SLACK_BYTES

#: File name endings of single-file NIfTI (``.hdr``/``.img`` pairs are left to SimpleITK).
NIFTI_SUFFIXES = ('.nii', '.nii.gz')
_GZIP_MAGIC = b'\x1f\x8b'
_CHUNK = 1 << 22
#: NIfTI datatype code -> NumPy dtype character code (byte order added per file).
_DTYPES = {
    2: 'u1', 4: 'i2', 8: 'i4', 16: 'f4', 32: 'c8', 64: 'f8', 256: 'i1', 512: 'u2', 768: 'u4',
    1024: 'i8', 1280: 'u8', 1792: 'c16',
}
#: Float datatypes whose voxels this module reads itself (NaN/Inf only exist in them).
FLOAT_DATATYPES = (16, 64)


class TruncatedFileError(ValueError):
    """A file holds fewer bytes than its header declares (or its compressed stream is cut).

    Example:
        >>> check_length('cut.nii.gz')  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        pyable_tio.io.nifti.TruncatedFileError: truncated file: the gzip stream ends early ...
    """


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1 or NIfTI-2 header that locate and decode the voxel block.

    Attributes:
        dims: Sizes along x, y, z, t, ... (``dim[1:dim[0] + 1]``).
        datatype: NIfTI datatype code (16 = float32, 64 = float64, ...).
        bitpix: Bits per voxel.
        vox_offset: Byte offset of the voxel block.
        slope: ``scl_slope`` (0 or NaN means no scaling).
        inter: ``scl_inter``.
        byteorder: ``"<"`` or ``">"``.
        compressed: Whether the file is gzip-compressed.

    Example:
        >>> read_nifti_header('t1.nii').vox_offset  # doctest: +SKIP
        352
    """

    dims: tuple[int, ...]
    datatype: int
    bitpix: int
    vox_offset: int
    slope: float
    inter: float
    byteorder: str
    compressed: bool

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64)) if self.dims else 0

    @property
    def data_bytes(self) -> int:
        """Bytes of the voxel block the header declares."""
        return self.num_voxels * self.bitpix // 8

    @property
    def expected_bytes(self) -> int:
        """Uncompressed length the file needs: header, extensions and voxels."""
        return self.vox_offset + self.data_bytes

    @property
    def dtype(self) -> np.dtype | None:
        """NumPy dtype of stored voxels (file byte order), None for unsupported datatypes."""
        code = _DTYPES.get(self.datatype)
        return None if code is None else np.dtype(self.byteorder + code)

    @property
    def scaled(self) -> bool:
        """Whether ``scl_slope``/``scl_inter`` apply (as ITK applies them)."""
        return np.isfinite(self.slope) and self.slope != 0 and (self.slope != 1 or self.inter != 0)


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a single-file NIfTI by its ending.

    Example:
        >>> is_nifti('t1.nii.gz'), is_nifti('t1.nrrd')
        (True, False)
    """
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti_header(path: str | os.PathLike) -> NiftiHeader | None:
    """The header of a single-file NIfTI, or None when the file is not one (by magic).

    Reads at most 540 bytes (decompressed); never the voxels.

    Raises:
        OSError: If the file cannot be opened.

    Example:
        >>> read_nifti_header('t1.nii.gz').expected_bytes  # doctest: +SKIP
        122880
    """
    path = Path(path)
    compressed = _is_gzip(path)
    opener = gzip.open if compressed else open
    try:
        with opener(path, 'rb') as stream:
            raw = stream.read(540)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        return None  # not even a header: SimpleITK reports it
    if len(raw) < 348:
        return None
    for order in '<>':
        size = struct.unpack(order + 'i', raw[:4])[0]
        if size == 348 and raw[344:348] == b'n+1\x00':
            dim = struct.unpack(order + '8h', raw[40:56])
            datatype, bitpix = struct.unpack(order + '2h', raw[70:74])
            offset, slope, inter = struct.unpack(order + '3f', raw[108:120])
            break
        if size == 540 and len(raw) == 540 and raw[4:8] == b'n+2\x00':
            datatype, bitpix = struct.unpack(order + '2h', raw[12:16])
            dim = struct.unpack(order + '8q', raw[16:80])
            offset = struct.unpack(order + 'q', raw[168:176])[0]
            slope, inter = struct.unpack(order + '2d', raw[176:192])
            break
    else:
        return None
    if not 1 <= dim[0] <= 7 or any(d < 0 for d in dim[1:dim[0] + 1]) or bitpix <= 0:
        return None
    return NiftiHeader(
        tuple(int(d) for d in dim[1:dim[0] + 1]), int(datatype), int(bitpix), int(offset),
        float(slope), float(inter), order, compressed,
    )


def check_length(path: str | os.PathLike, header: NiftiHeader | None = None) -> None:
    """Cheap check that a NIfTI file holds every voxel its header declares.

    A plain file: its size against ``vox_offset`` + voxels x bytes (one ``stat``). A gzip
    file: first the most its compressed size can expand to (deflate's 1032:1 limit; a header
    asking for more is a cut or crafted file, refused before anything is allocated), then the
    trailer's ISIZE field (uncompressed length mod 2^32) against that; only when they disagree
    (cut file, or a legal but unusual multi-member stream) is the stream decompressed to
    decide. Other files pass.

    Raises:
        TruncatedFileError: naming what the file holds and what its header needs.
        OSError: If the file cannot be read.
    """
    path = Path(path)
    header = header if header is not None else read_nifti_header(path)
    if header is None:
        return
    if not header.compressed:
        size = path.stat().st_size
        if size < header.expected_bytes:
            raise TruncatedFileError(_short(size, header))
        return
    check_ratio(path, header)
    with path.open('rb') as stream:
        stream.seek(-4, os.SEEK_END)
        isize = struct.unpack('<I', stream.read(4))[0]
    if isize != header.expected_bytes % (1 << 32):
        check_stream(path, header)


def check_ratio(path: str | os.PathLike, header: NiftiHeader) -> None:
    """Refuse a gzip NIfTI whose header declares more bytes than its compressed size can hold.

    Deflate expands one byte to at most 1032, so a 100-byte file cannot hold 4 GiB of voxels,
    whatever its ISIZE trailer (kept modulo 2^32) says. One ``stat``; nothing is decompressed.

    Raises:
        TruncatedFileError: naming the declared and the possible size.

    Example:
        >>> check_ratio('bomb.nii.gz', read_nifti_header('bomb.nii.gz'))  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        pyable_tio.nifti.TruncatedFileError: impossible size: the header declares 4294967648 bytes ...
    """
    if not header.compressed:
        return
    compressed = Path(path).stat().st_size
    limit = compressed * DEFLATE_MAX_RATIO + DEFLATE_SLACK_BYTES
    if header.expected_bytes > limit:
        raise TruncatedFileError(
            f'impossible size: the header declares {header.expected_bytes} bytes'
            f' ({header.num_voxels} voxels x {header.bitpix // 8} bytes), but a {compressed}-byte'
            f' gzip file expands to at most {limit} (deflate: 1032:1); a truncated or crafted file'
            ' (gzip bomb), refused before reading it'
        )


def check_stream(path: str | os.PathLike, header: NiftiHeader | None = None) -> int:
    """Full check: decompress the whole file and compare its length to the header's.

    Returns:
        The uncompressed length in bytes.

    Raises:
        TruncatedFileError: a decompression error, a stream cut short, or too few bytes.

    Example:
        >>> check_stream('t1.nii.gz')  # what validate runs on every file  # doctest: +SKIP
        123232
    """
    path = Path(path)
    header = header if header is not None else read_nifti_header(path)
    if header is None:
        return path.stat().st_size
    if not header.compressed:
        size = path.stat().st_size
    else:
        check_ratio(path, header)
        size = _inflated_length(path, header)
    if size < header.expected_bytes:
        raise TruncatedFileError(_short(size, header))
    return size


def read_voxels(path: str | os.PathLike, header: NiftiHeader) -> np.ndarray:
    """The voxel block as stored (then scaled as ITK scales it), flat, x fastest.

    The values are exactly what SimpleITK returns, except that NaN and +-Inf stay as stored.

    Raises:
        TruncatedFileError: If the file is shorter than its header declares.
        ValueError: If the datatype is not supported.

    Example:
        >>> header = read_nifti_header('adc.nii.gz')  # doctest: +SKIP
        >>> read_voxels('adc.nii.gz', header).reshape(header.dims[::-1])  # Z, Y, X  # doctest: +SKIP
    """
    dtype = header.dtype
    if dtype is None:
        raise ValueError(f'unsupported NIfTI datatype {header.datatype}')
    path = Path(path)
    end = header.vox_offset + header.data_bytes
    if header.compressed:
        check_ratio(path, header)
        # One zlib pass over the whole member: several times faster than GzipFile's reads.
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(path.read_bytes(), end)
            if len(raw) < end and inflater.unused_data:  # several gzip members (legal, rare)
                with gzip.open(path, 'rb') as stream:
                    raw = stream.read(end)
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise TruncatedFileError(f'truncated or damaged file: {error}') from None
    else:
        with path.open('rb') as stream:
            raw = stream.read(end)
    if len(raw) < end:
        raise TruncatedFileError(_short(len(raw), header))
    array = np.frombuffer(raw, dtype=dtype, count=header.num_voxels, offset=header.vox_offset)
    native = array.astype(dtype.newbyteorder('='), copy=not array.flags.writeable)
    if header.scaled:
        native = native * native.dtype.type(header.slope) + native.dtype.type(header.inter)
    return native


def _inflated_length(path: Path, header: NiftiHeader) -> int:
    """Decompressed length of a gzip file, counted exactly (memory bounded by ``_CHUNK``)."""
    size = 0
    inflater, fed = zlib.decompressobj(16 + zlib.MAX_WBITS), False
    try:
        with path.open('rb') as stream:
            for block in iter(lambda: stream.read(_CHUNK), b''):
                while block:
                    fed = True
                    size += len(inflater.decompress(block, _CHUNK))
                    if inflater.eof:  # end of one member: another may follow (legal, rare)
                        block = inflater.unused_data
                        inflater, fed = zlib.decompressobj(16 + zlib.MAX_WBITS), False
                    else:
                        block = inflater.unconsumed_tail
        if fed:
            size += len(inflater.flush())
            if not inflater.eof:
                raise EOFError('the compressed stream ends before its end marker')
    except (EOFError, zlib.error) as error:
        where = f'after {size} bytes' if size else 'at its first byte'
        problem = f'truncated or damaged file: the gzip stream fails {where} ({error})'
        raise TruncatedFileError(f'{problem}; the header needs {header.expected_bytes}') from None
    return size


def _is_gzip(path: Path) -> bool:
    with path.open('rb') as stream:
        return stream.read(2) == _GZIP_MAGIC


def _short(size: int, header: NiftiHeader) -> str:
    return (
        f'truncated file: {size} bytes, but its header needs {header.expected_bytes}'
        f' ({header.vox_offset} header + {header.num_voxels} voxels x {header.bitpix // 8} bytes)'
    )
