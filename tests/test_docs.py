"""Documentation stays complete: API.md covers every export, every public object has a docstring,
and the README's fresh-machine commands are the ones CI runs."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
import shlex
import shutil
import textwrap
import warnings
from pathlib import Path

import pytest

import pyable_tio

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / 'docs' / 'API.md'
README = ROOT / 'README.md'
CI = ROOT / '.ci' / 'run'


def api_sections() -> dict[str, str]:
    """``### name`` heading -> the text up to the next heading."""
    text = API.read_text()
    parts = re.split(r'^(#{2,3}) +(.+?)\s*$', text, flags=re.MULTILINE)
    sections = {}
    for level, title, body in zip(parts[1::3], parts[2::3], parts[3::3]):
        if level == '###':
            sections[title.strip('` ')] = body
    return sections


def test_every_export_has_an_api_entry_with_an_example():
    sections = api_sections()
    missing = sorted(set(pyable_tio.__all__) - set(sections))
    assert not missing, f'docs/API.md lacks a "### name" entry for: {missing}'
    sub_missing = sorted({f'transforms.{n}' for n in pyable_tio.transforms.__all__ if n != 'ToZYX'} - set(sections))
    assert not sub_missing, f'docs/API.md lacks entries for: {sub_missing}'
    no_example = sorted(name for name in pyable_tio.__all__ if '```python' not in sections[name].split('```', 1)[-1])
    assert not no_example, f'docs/API.md entries without a signature and an example code block: {no_example}'


def test_api_entries_name_real_exports():
    # Headings that are not exports, nor a name importable from its module, are stale documentation.
    exports = set(pyable_tio.__all__) | {f'transforms.{name}' for name in pyable_tio.transforms.__all__}
    stale = sorted(title for title in set(api_sections()) - exports if not _importable(title))
    assert not stale, f'docs/API.md documents names that pyable_tio does not export: {stale}'


def _importable(qualified: str) -> bool:
    """Whether ``pyable_tio.module.Name`` names an object of that module."""
    module, _, name = qualified.rpartition('.')
    if not module.startswith('pyable_tio.'):
        return False
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def public_objects():
    """(qualified name, object) for public functions, classes and methods defined in the package."""
    modules = [pyable_tio] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(pyable_tio.__path__, prefix='pyable_tio.')
        if not any(part.startswith('_') for part in info.name.split('.'))
    ]
    for module in modules:
        for name, obj in vars(module).items():
            if name.startswith('_') or getattr(obj, '__module__', None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f'{module.__name__}.{name}', obj
            elif inspect.isclass(obj):
                yield f'{module.__name__}.{name}', obj
                for attribute, member in vars(obj).items():
                    if attribute.startswith('_'):
                        continue
                    function = getattr(member, '__func__', member)  # classmethod / staticmethod
                    if inspect.isfunction(function):
                        yield f'{module.__name__}.{name}.{attribute}', (obj, attribute)


def has_docstring(obj) -> bool:
    if isinstance(obj, tuple):  # a method: its own docstring or the one it overrides
        cls, attribute = obj
        return bool(inspect.getdoc(getattr(cls, attribute)))
    doc = obj.__doc__
    if inspect.isclass(obj) and doc and doc.startswith(f'{obj.__name__}('):
        return False  # the signature dataclasses write when a class has no docstring
    return bool(doc and doc.strip())


def test_every_public_function_class_and_method_has_a_docstring():
    missing = sorted(name for name, obj in public_objects() if not has_docstring(obj))
    assert not missing, f'public objects without a docstring: {missing}'


def readme_commands() -> list[str]:
    text = README.read_text()
    section = text.split('## Two commands on a fresh machine', 1)[1].split('\n## ', 1)[0]
    return re.findall(r'```bash\n(.+?)\n```', section, flags=re.DOTALL)


def normalized(step: str) -> str:
    """A shell step without quiet flags or ``python -m`` before pip, quotes resolved."""
    words = [w for w in shlex.split(step) if w != '-q']
    if words[:3] == ['python', '-m', 'pip']:
        words = words[2:]
    return ' '.join(words)


def test_readme_fresh_machine_commands_match_ci():
    commands = readme_commands()
    assert len(commands) == 2, 'README must show exactly two fresh-machine commands'
    demo, tests = commands
    assert demo.endswith('python -m pyable_tio.demo')
    assert tests.endswith('python -m pytest -q tests')
    ci_steps = {normalized(line) for line in CI.read_text().splitlines() if line and not line.startswith('#')}
    for command in commands:
        assert '\n' not in command.strip(), 'each README command is one line'
        for step in command.split('&&'):
            if 'pyable_tio.demo' in step or 'pip install -e .' == normalized(step):
                continue  # the demo command's own install/run steps
            assert normalized(step) in ci_steps, f'README step {step.strip()!r} is not what .ci/run does'
    # The demo command installs the same way as CI, without the dev extra.
    assert 'pip install torch==2.13.0' in demo and 'pip install -e .' in demo


def test_readme_covers_the_user_guide_and_its_code_parses():
    import ast

    text = README.read_text()
    for heading in ('## Installation', '## Quick start', '## Manifest format', '## Common use cases'):
        assert heading in text, f'README lacks {heading!r}'
    for topic in ('.[pyable]', 'Single CSV', 'Multi-CSV', 'List of paths', '`reference_space`', '`transforms`',
                  'Relative paths', 'Single-channel', 'Multi-channel', 'ROIs and label maps',
                  'Custom augmentation', 'cache_dir=', 'Custom reference spaces', 'Oblique', 'LightningDataModule'):
        assert topic in text, f'README does not cover {topic!r}'
    for block in re.findall(r'```python\n(.+?)\n```', text, flags=re.DOTALL):
        ast.parse(block)  # a SyntaxError here names the broken README example


# ------------------------------------------------------- every code block runs

#: A ```python block, possibly indented (in a list item); its code is dedented before it runs.
PYTHON_BLOCK = re.compile(r'^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$',
                          re.MULTILINE | re.DOTALL)
#: Written on the line just before a block that cannot run here (GPU, several processes...).
NOT_RUN = re.compile(r'<!--\s*not-run:\s*(?P<reason>[^>]*?)\s*-->\s*$')
DOCUMENTS = [README, *sorted((ROOT / 'docs').glob('*.md'))]


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, not_run_reason)`` of every ```python block of ``path``, in order."""
    text = path.read_text()
    blocks = []
    for match in PYTHON_BLOCK.finditer(text):
        before = text[:match.start()].rstrip('\n').rsplit('\n', 1)[-1]
        marker = NOT_RUN.search(before)
        code = textwrap.dedent(match.group('code'))
        blocks.append((text.count('\n', 0, match.start()) + 1, code, marker.group('reason') if marker else None))
    return blocks


@pytest.fixture(scope='module')
def sample_data(tmp_path_factory) -> Path:
    """The package's sample data, made as the docs say (examples/data/make_sample_data.py)."""
    folder = tmp_path_factory.mktemp('sample')
    script = ROOT / 'examples' / 'data' / 'make_sample_data.py'
    spec = importlib.util.spec_from_file_location('make_sample_data', script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_sample_data(folder)
    return folder


@pytest.mark.parametrize('document', DOCUMENTS, ids=lambda path: path.name)
def test_every_python_block_runs_as_written(document, sample_data, tmp_path, monkeypatch):
    """Blocks of one file run in order in one namespace, in a folder holding the sample data."""
    folder = tmp_path / 'sample'
    shutil.copytree(sample_data, folder)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    namespace: dict = {'__name__': '__docs__'}
    failures = []
    blocks = python_blocks(document)
    for line, code, reason in blocks:
        if reason is not None:
            assert reason, f'{document.name}:{line}: a not-run marker needs a reason'
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                # dont_inherit: a block runs as a user's script would, without this file's
                # `from __future__ import annotations` (string annotations break a block's dataclass).
                exec(compile(code, f'{document.name}:{line}', 'exec', dont_inherit=True), namespace)
        except BaseException as error:  # noqa: BLE001 - every failing block is reported
            failures.append(f'{document.name}:{line}: {type(error).__name__}: {str(error).strip()[:400]}')
    hint = ('\n(blocks run in the sample-data folder, in order, in one namespace; signatures go in'
            ' ```text blocks; a block that cannot run here follows <!-- not-run: reason -->)')
    assert not failures, '\n'.join(failures) + hint
    skipped = [line for line, _, reason in blocks if reason is not None]
    assert len(skipped) <= max(2, len(blocks) // 10), f'{document.name}: too many not-run blocks at lines {skipped}'


def test_python_blocks_are_found_indented_and_marked(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text('# t\n\n```python\nx = 1\n```\n\n- item:\n  ```python\n  y = x + 1\n  ```\n\n'
                    '<!-- not-run: needs a GPU -->\n```python\nz = torch.ones(1).cuda()\n```\n\n```text\nno\n```\n')
    assert python_blocks(page) == [(3, 'x = 1\n', None), (8, 'y = x + 1\n', None),
                                   (13, 'z = torch.ones(1).cuda()\n', 'needs a GPU')]
