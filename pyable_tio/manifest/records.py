"""Typed records that every manifest format is parsed into."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import SimpleITK as sitk

from ..geometry.grid import Grid

#: A reference as written in a manifest: an index, a file, or "first"/"largest".
ReferenceValue = Union[int, Path, str]


@dataclass(frozen=True)
class TransformEntry:
    """One registration transform: a file SimpleITK reads, or an in-memory transform.

    Args:
        source: Path of a transform file (``.tfm``, ``.txt``, ``.mat``, ``.h5``), of a
            displacement field image, or a ``sitk.Transform``.
        invert: Use the inverse of what ``source`` holds.

    Example:
        >>> TransformEntry(Path('/data/t2_to_t1.tfm'), invert=True).describe()
        '/data/t2_to_t1.tfm (inverted)'
    """

    source: Path | sitk.Transform
    invert: bool = False

    def describe(self) -> str:
        """Readable text for ``meta['transforms_applied']``: the file, or the in-memory type."""
        if isinstance(self.source, Path):
            what = str(self.source)
        else:
            what = f'in-memory {self.source.GetName()}'
        return f'{what} (inverted)' if self.invert else what


@dataclass(frozen=True)
class FileEntry:
    """One image, ROI or label map file of a subject.

    Args:
        path: Absolute path of the file.
        transforms: Transforms that belong to this file only, applied after the subject's.
        name: Optional name (a multi-CSV ``sequence``, ``roi_type`` or ``label_type``).
        preprocess: Preprocessing steps of this file (images only), or None to use the
            subject's (``()`` turns them off for this file).

    Example:
        >>> entry = FileEntry(Path('/data/t2.nii.gz'), (TransformEntry(Path('/data/t2.tfm')),), 'T2')
        >>> entry.name, len(entry.transforms)
        ('T2', 1)
    """

    path: Path
    transforms: tuple[TransformEntry, ...] = ()
    name: str | None = None
    preprocess: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class SubjectRecord:
    """Everything a manifest says about one subject, with paths resolved.

    Args:
        id: Subject identifier, unique in its manifest.
        images: Image files; one channel each (vector images give several).
        rois: Binary region-of-interest files.
        labelmaps: Integer label map files.
        reference: Index into ``images``, a path, ``"first"``/``"largest"`` or ``None``
            (use the selector given when building subjects).
        reference_space: A grid (or the file whose grid it is) for this subject.
        transforms: Transforms applied to every file of the subject.
        extra: Any other fields (class label, age, ...), copied into the subject.
        preprocess: Preprocessing steps of the subject's images, or None to use the ones
            given when building subjects.

    Example:
        >>> record = read_manifest('manifest.json')[0]  # doctest: +SKIP
        >>> record.id, [e.path.name for e in record.images], record.extra  # doctest: +SKIP
        ('sub-00', ['sub-00_t1.nii.gz', 'sub-00_t2.nii.gz'], {'label': 0, 'age': 40})
    """

    id: str
    images: tuple[FileEntry, ...]
    rois: tuple[FileEntry, ...] = ()
    labelmaps: tuple[FileEntry, ...] = ()
    reference: ReferenceValue | None = None
    reference_space: Path | Grid | None = None
    transforms: tuple[TransformEntry, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    preprocess: tuple[Any, ...] | None = None

    def entries(self) -> Iterator[tuple[str, FileEntry]]:
        """``(field, entry)`` for every image, ROI and label map file."""
        for name in ('images', 'rois', 'labelmaps'):
            for entry in getattr(self, name):
                yield name, entry

    def transform_entries(self) -> list[TransformEntry]:
        """The subject's transforms, then each file's own, in manifest order (repeats kept).

        Example:
            >>> [t.source.name for t in manifest['sub-01'].transform_entries()]  # doctest: +SKIP
            ['session.tfm', 't2_to_t1.tfm']
        """
        return [*self.transforms, *(t for _, entry in self.entries() for t in entry.transforms)]


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: subjects in manifest order.

    Example:
        >>> manifest = read_manifest('manifest.json')  # doctest: +SKIP
        >>> manifest['sub-01'].images[0].path  # doctest: +SKIP
    """

    subjects: tuple[SubjectRecord, ...]
    source: str | None = None
    #: What parsing found (structural problems of the subjects left out, one line each) and how
    #: many subjects the source listed: a parsed manifest passed on is never parsed again, and
    #: its problems are still reported.
    problems: tuple[str, ...] = field(default=(), compare=False, repr=False)
    listed: int | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self) -> Iterator[SubjectRecord]:
        return iter(self.subjects)

    def __getitem__(self, key: int | str) -> SubjectRecord:
        if isinstance(key, int):
            return self.subjects[key]
        for record in self.subjects:
            if record.id == key:
                return record
        raise KeyError(f'no subject "{key}" in manifest {self.source or ""}'.strip())

    @property
    def ids(self) -> list[str]:
        return [record.id for record in self.subjects]
