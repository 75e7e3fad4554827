"""Exception types. Every message names the subject, the field or file, and the problem."""

from __future__ import annotations

from collections.abc import Iterable


class PyableTioError(Exception):
    """Base class of the errors raised by pyable-tio.

    Example:
        >>> try:
        ...     raise LoadError('subject "a": file t2.nii.gz: unreadable image')
        ... except PyableTioError as error:
        ...     print(error)
        subject "a": file t2.nii.gz: unreadable image
    """


class ManifestError(PyableTioError, ValueError):
    """A manifest is malformed or lists files that cannot be used.

    Several problems found in one pass are reported together, one per line.

    Example:
        >>> raise ManifestError.from_problems(['subject "a": field "images": list is empty'])
        Traceback (most recent call last):
        ...
        pyable_tio.errors.ManifestError: 1 problem in the manifest:
          - subject "a": field "images": list is empty
    """

    def __init__(self, message: str, problems: Iterable[str] = ()):
        super().__init__(message)
        self.problems = list(problems) or [message]
        #: ``subjects_from_manifest``'s subjects that planned without a problem of their own,
        #: for tools that go on without the bad ones (``pyable-tio cache``).
        self.subjects: list = []

    @classmethod
    def from_problems(cls, problems: Iterable[str]) -> ManifestError:
        """One error whose message lists ``problems``, one per line."""
        problems = list(problems)
        noun = 'problem' if len(problems) == 1 else 'problems'
        lines = '\n'.join(f'  - {p}' for p in problems)
        return cls(f'{len(problems)} {noun} in the manifest:\n{lines}', problems)


class LoadError(PyableTioError, RuntimeError):
    """A file could not be loaded, transformed or resampled at read time.

    Raised by the readers, inside DataLoader workers, when TorchIO loads a subject; the
    message names the subject, the file and the problem.

    Example:
        >>> subject.load()  # t2.nii.gz deleted since the subjects were built  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        pyable_tio.errors.LoadError: subject "sub-01": file /data/t2.nii.gz: unreadable image: ...
    """


class SkippedSubjectsWarning(UserWarning):
    """Subjects left out by ``on_error="skip"``; ``skipped`` holds their ids, ``problems`` why.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:  # doctest: +SKIP
        ...     subjects = subjects_from_manifest('manifest.json', on_error='skip')
        >>> caught[0].message.skipped  # doctest: +SKIP
        ['sub-07']
    """

    def __init__(self, message: str, skipped: Iterable[str] = (), problems: Iterable[str] = ()):
        super().__init__(message)
        self.skipped = list(skipped)
        self.problems = list(problems)


def subject_of(problem: str) -> str | None:
    """The subject a problem line made by :func:`describe` names, or None (a manifest-wide problem).

    Example:
        >>> subject_of('subject "sub-02": field "images": file t1.nii.gz: file not found')
        'sub-02'
    """
    prefix = 'subject "'
    if not problem.startswith(prefix):
        return None
    end = problem.find('": ', len(prefix))
    return problem[len(prefix):end] if end > 0 else None


def describe(subject_id: str | None, where: str | None, problem: str) -> str:
    """One line that names the subject, the field or file, and the problem."""
    parts = []
    if subject_id is not None:
        parts.append(f'subject "{subject_id}"')
    if where:
        parts.append(where)
    parts.append(problem)
    return ': '.join(parts)


def short_error(error: Exception) -> str:
    """The informative line of a (often multi-line) SimpleITK/ITK exception."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if 'rror' in line or 'not' in line.lower()]
    return (useful or lines or ['unknown error'])[-1][:300]


class MissingDependencyError(PyableTioError, ImportError):
    """An optional package a requested feature needs is not installed; says how to install it.

    Example:
        >>> raise MissingDependencyError('step "skullstrip" needs deepbet: pip install "pyable-tio[brain]"')
        Traceback (most recent call last):
        ...
        pyable_tio.errors.MissingDependencyError: step "skullstrip" needs deepbet: pip install "pyable-tio[brain]"
    """


class LabelValuesWarning(UserWarning):
    """A label map that is probably not one, or partly off its image (the message says which).

    Filter it for data known to be right, e.g. a 400-region parcellation:
    ``warnings.filterwarnings('ignore', category=LabelValuesWarning)``.

    Example:
        >>> issubclass(LabelValuesWarning, UserWarning)
        True
    """
