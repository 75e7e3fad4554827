"""Running a file's steps in its native space, once: the result is a cache entry of its own.

The preprocessed native volume (and each mask a step makes, such as the brain mask) is stored
in the volume cache under a key made of the source file's content digest, every step's
``key`` (name, parameters, tool versions) and the digests of the ROI files used as masks. The
resampled volume that training reads has its own entry on top, as without preprocessing; so
a warm cache never runs a step, and a new grid or interpolator resamples the stored native
result instead of running N4 again.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..io import backend
from ..constants import CACHE_FORMAT_VERSION, PREPROCESS_IMAGE
from ..geometry.grid import Grid
from ..cache.digest import SourceChanged, digest_of, file_digest, identity_now, source_identity
from .base import PreprocessStep, step_key

#: Without a cache, the last outputs computed in this process, so that the image and its brain
#: mask (two readers, loaded one after the other) run the steps once. With a cache the second
#: reader reads the stored entry instead, and nothing is held in memory.
_RECENT: OrderedDict[str, dict[str, sitk.Image]] = OrderedDict()
_RECENT_SIZE = 1
_RECENT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Preprocessing:
    """The steps of one file and which of their outputs a reader wants.

    Args:
        steps: Step objects, in order (:func:`~pyable_tio.preprocess.resolve_steps`).
        output: ``"image"`` (the processed image) or the name of a mask a step makes
            (``"brain"`` for the subject's ``roi_brain``).
        mask_files: ``(roi key, path)`` of the ROI files the steps use as masks.

    Example:
        >>> from pyable_tio.preprocess import N4, Preprocessing
        >>> Preprocessing((N4(),)).describe()['output']
        'image'
    """

    steps: tuple[Any, ...]
    output: str = PREPROCESS_IMAGE
    mask_files: tuple[tuple[str, str], ...] = ()

    def describe(self, digest: Callable[[str], str] = file_digest) -> dict[str, Any]:
        """What the output depends on besides the source file, for cache keys (JSON-serialisable).

        Args:
            digest: The content digest of a file (a cache's ``source_digest``: memoised on disk).

        Raises:
            OSError: when a mask file cannot be read.
        """
        return {
            'steps': [step_key(step) for step in self.steps],
            'masks': {name: digest(path) for name, path in self.mask_files},
            'output': self.output,
        }

    def files(self, path: str | os.PathLike) -> tuple[str, ...]:
        """The files the outputs for ``path`` are made from: it and the mask files.

        Example:
            >>> Preprocessing((N4(),), mask_files=(('roi_0', 'roi.nii.gz'),)).files('t1.nii.gz')
            ('t1.nii.gz', 'roi.nii.gz')
        """
        return (os.fspath(path), *(os.fspath(mask) for _, mask in self.mask_files))

    def run(self, image: sitk.Image, path: str | os.PathLike, cache: Any = None,
            identity: tuple[Any, ...] | None = None) -> sitk.Image:
        """The requested output for ``image`` read from ``path``, from the cache when it is there.

        Args:
            image: The file as loaded (native space, float32).
            path: The file (its content digest keys the result).
            cache: Optional :class:`~pyable_tio.VolumeCache`; the outputs are stored in it.
            identity: :func:`~pyable_tio.cache.digest.source_identity` of :meth:`files`, taken before
                ``image`` was read (default: now). Outputs are stored, or kept in memory, only
                when it still holds after the key is built and the steps ran: else the key could
                name another version of the file than the one ``image`` holds.

        Returns:
            The output, on ``image``'s grid.

        Raises:
            ValueError: a step failed or returned an image on another grid.
            MissingDependencyError: a step's optional package is not installed.
            SourceChanged: with a cache, the file changed since it was read (nothing stored).
        """
        files = self.files(path)
        if identity is None:
            identity = source_identity(files)

        def unchanged() -> bool:
            return identity_now(files) == identity

        digest = cache.source_digest if cache is not None else file_digest
        base = {'kind': 'preprocessed', 'format': CACHE_FORMAT_VERSION, 'source': digest(path), **self.describe(digest)}
        base.pop('output')
        if cache is not None:
            outputs = self._cached(image, path, cache, base, unchanged)
        else:
            memo_key = digest_of(base)
            outputs = _recent(memo_key) if unchanged() else None
            if outputs is None:
                outputs = self.compute(image)
                if unchanged():
                    _remember(memo_key, outputs)
        if self.output not in outputs:
            raise ValueError(f'no step makes "{self.output}" (outputs: {sorted(outputs)})')
        return outputs[self.output]

    def compute(self, image: sitk.Image) -> dict[str, sitk.Image]:
        """Run the steps: ``{"image": processed image, mask name: mask, ...}``.

        Example:
            >>> outputs = Preprocessing((N4(),)).compute(t1)  # doctest: +SKIP
            >>> sorted(outputs)  # doctest: +SKIP
            ['image']
        """
        masks = {name: _mask_on(image, path) for name, path in self.mask_files}
        made: dict[str, sitk.Image] = {}
        for step in self.steps:
            if isinstance(step, PreprocessStep):
                result, new = step.apply(image, {**masks, **made})
                made.update(new)
            else:
                result = step(image)
            if not isinstance(result, sitk.Image) or result.GetSize() != image.GetSize():
                got = result.GetSize() if isinstance(result, sitk.Image) else type(result).__name__
                raise ValueError(f'step {step!r} must return an image of size {image.GetSize()}, got {got}')
            image = result
        return {PREPROCESS_IMAGE: image, **made}

    def _cached(self, image: sitk.Image, path: Any, cache: Any, base: dict[str, Any],
                unchanged: Callable[[], bool]) -> dict[str, sitk.Image]:
        """Outputs from the cache, or computed (once across processes) and stored."""
        names = [PREPROCESS_IMAGE, *_masks_made(self.steps)]
        keys = {name: digest_of({**base, 'output': name}) for name in names}
        changed = SourceChanged(f'{path} changed while it was preprocessed')
        found = _read(cache, keys, image)
        if found is not None:
            if not unchanged():
                raise changed  # the entry found is of the new version, ``image`` of the old one
            return found
        # Hold a lock per entry while computing: another worker asked for the brain mask of
        # this very file waits for these outputs instead of running the steps a second time.
        with cache.exclusive(keys[PREPROCESS_IMAGE]):
            found = _read(cache, keys, image)
            if found is not None:
                if not unchanged():
                    raise changed
                return found
            outputs = self.compute(image)
            if not unchanged():
                raise changed
            for name, key in keys.items():
                output = outputs[name]
                array = sitk.GetArrayFromImage(output)
                cache.put(key, array, {**base, 'output': name}, source=path, grid=Grid.from_image(output).to_dict())
        return outputs


def _masks_made(steps: tuple[Any, ...]) -> list[str]:
    names: list[str] = []
    for step in steps:
        if isinstance(step, PreprocessStep):
            names += [name for name in step.masks_made() if name not in names]
    return names


def _read(cache: Any, keys: dict[str, str], image: sitk.Image) -> dict[str, sitk.Image] | None:
    outputs = {}
    for name, key in keys.items():
        array = cache.get(key)
        if array is None or tuple(reversed(array.shape)) != tuple(image.GetSize()):
            return None
        output = sitk.GetImageFromArray(np.asarray(array))
        output.CopyInformation(image)
        outputs[name] = output
    return outputs


def _mask_on(image: sitk.Image, path: str) -> sitk.Image:
    """An ROI file as a 0/1 mask on ``image``'s voxels (nearest-neighbour, in physical space)."""
    roi = backend.load(path, backend.ROLE_ROI)
    if roi.GetDimension() != image.GetDimension():
        raise ValueError(f'mask {path} is {roi.GetDimension()}-D, the image {image.GetDimension()}-D')
    grid = Grid.from_image(image)
    mask = backend.resample(roi, grid, backend.ROLE_ROI, default_value=0.0)
    return sitk.Cast(mask > 0, sitk.sitkUInt8)


def _recent(key: str) -> dict[str, sitk.Image] | None:
    with _RECENT_LOCK:
        outputs = _RECENT.get(key)
        if outputs is not None:
            _RECENT.move_to_end(key)
        return outputs


def _remember(key: str, outputs: dict[str, sitk.Image]) -> None:
    with _RECENT_LOCK:
        _RECENT[key] = outputs
        _RECENT.move_to_end(key)
        while len(_RECENT) > _RECENT_SIZE:
            _RECENT.popitem(last=False)


def clear_recent() -> None:
    """Forget the outputs this process keeps in memory (tests, or to free memory).

    Example:
        >>> clear_recent()
    """
    with _RECENT_LOCK:
        _RECENT.clear()

