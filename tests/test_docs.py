"""Documentation stays complete: API.md covers every export, every public object has a docstring,
and the README's fresh-machine commands are the ones CI runs."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import shlex
from pathlib import Path

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
    # Headings that are not exports would be stale documentation.
    exports = set(pyable_tio.__all__) | {f'transforms.{name}' for name in pyable_tio.transforms.__all__}
    stale = sorted(set(api_sections()) - exports)
    assert not stale, f'docs/API.md documents names that pyable_tio does not export: {stale}'


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
