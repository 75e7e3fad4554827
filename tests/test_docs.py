"""Documentation stays complete and true: API.md covers every export, every public object has a
docstring, the README's fresh-machine commands are the ones CI runs, and every example runs and
shows what it really gives.

Conventions of the code blocks in README.md and docs/*.md (checked here, on the sample data made
by ``python examples/data/make_sample_data.py DIR``, in that folder):

- Every ```python block runs. The blocks of a docs/*.md page run in order in one namespace; the
  README's run in one namespace per ``## `` section, so that each section runs on its own, with
  its own imports. A block that cannot run here (GPU, several processes, a cluster) follows a
  ``<!-- not-run: reason -->`` line.
- **Commented values are checked.** A top-level expression line with a trailing comment whose
  first part (up to two spaces, or the end) is a Python value is compared with the ``repr`` of
  what the line gives:

      subjects[0]["images"].data.shape   # torch.Size([2, 20, 28, 32])  C, D, H, W
      parsed.ids                         # ['sub-01', 'sub-02', 'sub-03']
      subject["meta"]["reference_used"]  # '.../sub-01_t1.nii.gz'

  Whitespace is ignored, ``...`` stands for any text, and a tuple may be written without its
  parentheses. Text after two spaces is a note. A comment that is not a value (``# reads the
  files``, ``# C x D x H x W``, a bare name) is prose and is not checked; so are comments on
  assignments and inside loops or functions.
- ```bash blocks whose commands are all ``pyable-tio ...`` run too (as ``python -m pyable_tio``),
  with ``manifest.json`` read as ``sample_manifest.json``, absolute folders made relative to the
  sample folder and ``${SLURM_ARRAY_TASK_ID}`` as 0. Each must exit 0, or N where its comment
  says ``exit N``, without a traceback. Other shell blocks (pip, torchrun, sbatch) are not run.
"""

from __future__ import annotations

import ast
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


# ------------------------------------------------- commented values (see the module docstring)

#: Bare names a stated value may use (anything else bare, ``# torch, numpy``, is prose).
VALUE_NAMES = {'nan', 'inf'}


def stated_value(comment: str) -> str | None:
    """The value a trailing comment states, or None when the comment is prose.

    Example: ``'torch.Size([2, 20, 28, 32])  C, D, H, W'`` -> ``'torch.Size([2, 20, 28, 32])'``.
    """
    text = re.split(r'\s{2,}', comment.strip(), maxsplit=1)[0].strip()
    if not text:
        return None
    try:
        tree = ast.parse(text, mode='eval')
    except SyntaxError:
        return None
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    called |= {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and id(node) not in called and node.id not in VALUE_NAMES:
            return None  # a bare word: prose
    return text


def value_matches(value, stated: str) -> bool:
    """Whether ``repr(value)`` is ``stated``, whitespace aside, ``...`` matching anything."""
    shown = re.sub(r'\s+', '', repr(value))
    candidates = {shown, re.sub(r'\s+', '', str(value))}
    candidates |= {re.sub(r'torch\.Size\(\[(.*?)\]\)', r'(\1)', c) for c in candidates}  # a shape as a tuple
    if isinstance(value, tuple):
        candidates |= {c[1:-1].rstrip(',') for c in candidates if c.startswith('(') and c.endswith(')')}
    pattern = '.*?'.join(re.escape(part) for part in re.sub(r'\s+', '', stated).split('...'))
    return any(re.fullmatch(pattern, candidate, flags=re.DOTALL) for candidate in candidates)


def checked_code(code: str, filename: str, mismatches: list[str]):
    """``code`` compiled so that each top-level expression line with a stated value checks it.

    Returns ``(code object, number of checked lines)``; a wrong value appends a line to
    ``mismatches`` and the block goes on.
    """
    tree = ast.parse(code)
    lines = code.splitlines()
    checked = 0

    def check(line: int, source: str, stated: str, value):
        if not value_matches(value, stated):
            mismatches.append(f'{filename.rsplit(":", 1)[0]}:{line}: {source} is {value!r}, the comment says {stated}')

    for index, node in enumerate(tree.body):
        if not isinstance(node, ast.Expr) or node.lineno != node.end_lineno:
            continue
        raw = lines[node.lineno - 1].encode()
        rest = raw[node.end_col_offset:].decode().strip()
        stated = stated_value(rest[1:]) if rest.startswith('#') else None
        if stated is None:
            continue
        checked += 1
        source = raw[node.col_offset:node.end_col_offset].decode()
        shown = node.value
        if (isinstance(shown, ast.Call) and isinstance(shown.func, ast.Name) and shown.func.id == 'print'
                and len(shown.args) == 1 and not shown.keywords):
            # print(x)  # value: x is checked (and still printed)
            node.value = ast.Call(ast.Name('__doc_print__', ast.Load()), shown.args, [])
        start = int(filename.rsplit(':', 1)[1])
        call = ast.Call(ast.Name('__doc_check__', ast.Load()),
                        [ast.Constant(start + node.lineno), ast.Constant(source), ast.Constant(stated), node.value], [])
        tree.body[index] = ast.copy_location(ast.Expr(call), node)
    ast.fix_missing_locations(tree)
    # dont_inherit: a block runs as a user's script would, without this file's
    # `from __future__ import annotations` (string annotations break a block's dataclass).
    return compile(tree, filename, 'exec', dont_inherit=True), checked, check


def _print_through(value):
    print(value)
    return value


def readme_section_starts(path: Path) -> list[int]:
    """Lines of the README's ``## `` headings: each section's blocks run in a fresh namespace."""
    return [number for number, text in enumerate(path.read_text().splitlines(), 1) if text.startswith('## ')]


def run_blocks(document: Path, blocks, fresh_at: list[int]) -> tuple[list[str], int]:
    """Run ``blocks`` of ``document``; a new namespace starts at each line of ``fresh_at``.

    Returns the failures (errors and wrong values, one line each) and the number of checked values.
    """
    failures: list[str] = []
    namespace: dict = {}
    section = None
    checked = 0
    for line, code, reason in blocks:
        if reason is not None:
            assert reason, f'{document.name}:{line}: a not-run marker needs a reason'
            continue
        current = max((start for start in fresh_at if start < line), default=None)
        if current != section or not namespace:
            section, namespace = current, {'__name__': '__docs__'}
        try:
            compiled, count, check = checked_code(code, f'{document.name}:{line}', failures)
            checked += count
            namespace['__doc_check__'] = check
            namespace['__doc_print__'] = _print_through
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                exec(compiled, namespace)
        except BaseException as error:  # noqa: BLE001 - every failing block is reported
            failures.append(f'{document.name}:{line}: {type(error).__name__}: {str(error).strip()[:400]}')
    return failures, checked


@pytest.mark.parametrize('document', DOCUMENTS, ids=lambda path: path.name)
def test_every_python_block_runs_as_written(document, sample_data, tmp_path, monkeypatch):
    """Blocks run in the sample-data folder and their commented values are true (module docstring)."""
    folder = tmp_path / 'sample'
    shutil.copytree(sample_data, folder)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    blocks = python_blocks(document)
    fresh_at = readme_section_starts(document) if document == README else []
    failures, checked = run_blocks(document, blocks, fresh_at)
    hint = ('\n(see the conventions at the top of tests/test_docs.py: blocks run in the sample-data folder;'
            ' README sections each in a fresh namespace; a top-level expression\'s trailing value comment'
            ' must be its repr; a block that cannot run here follows <!-- not-run: reason -->)')
    assert not failures, '\n'.join(failures) + hint
    if document in (README, API):
        assert checked >= 10, f'{document.name}: only {checked} commented values checked'
    skipped = [line for line, _, reason in blocks if reason is not None]
    assert len(skipped) <= max(2, len(blocks) // 10), f'{document.name}: too many not-run blocks at lines {skipped}'


# ----------------------------------------------------- command-line blocks (module docstring)

SHELL_BLOCK = re.compile(r'^(?P<indent>[ \t]*)```(?:bash|sh|shell)[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$',
                         re.MULTILINE | re.DOTALL)


def cli_blocks(path: Path) -> list[tuple[int, list[tuple[list[str], str]], str | None]]:
    """``(line, [(argv, comment), ...], not_run_reason)`` of each shell block of ``pyable-tio`` commands."""
    text = path.read_text()
    blocks = []
    for match in SHELL_BLOCK.finditer(text):
        before = text[:match.start()].rstrip('\n').rsplit('\n', 1)[-1]
        marker = NOT_RUN.search(before)
        code = textwrap.dedent(match.group('code')).replace('\\\n', ' ')
        lines = [line.strip() for line in code.splitlines() if line.strip() and not line.strip().startswith('#')]
        if not lines or not all(line.startswith('pyable-tio ') for line in lines):
            continue  # pip, torchrun, sbatch...: not this package's commands
        commands = []
        for line in lines:
            command, _, comment = line.partition(' # ')
            commands.append((shlex.split(command)[1:], comment))
        blocks.append((text.count('\n', 0, match.start()) + 1, commands, marker.group('reason') if marker else None))
    return blocks


def sample_argv(argv: list[str]) -> list[str]:
    """A documented command line made to run in the sample folder (module docstring)."""
    out = []
    for index, arg in enumerate(argv):
        arg = arg.replace('${SLURM_ARRAY_TASK_ID}', '0')
        if arg == 'manifest.json':
            arg = 'sample_manifest.json'
        elif arg.startswith('/'):
            arg = arg.lstrip('/')  # /scratch/cache -> scratch/cache in the sample folder
        elif index and argv[index - 1] == '--workers':
            arg = '0'  # in this process: the test stays seconds long
        out.append(arg)
    return out


@pytest.mark.parametrize('document', [d for d in DOCUMENTS if cli_blocks(d)], ids=lambda path: path.name)
def test_every_cli_block_runs_on_the_sample_data(document, sample_data, tmp_path, monkeypatch):
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    from pyable_tio.cli.main import main

    folder = tmp_path / 'sample'
    shutil.copytree(sample_data, folder)
    monkeypatch.chdir(folder)
    failures = []
    for line, commands, reason in cli_blocks(document):
        if reason is not None:
            continue
        for argv, comment in commands:
            expected = int(re.search(r'\bexit (\d+)', comment).group(1)) if re.search(r'\bexit \d+', comment) else 0
            args = sample_argv(argv) + ([] if '--no-progress' in argv or argv[0] not in ('cache', 'qa') else ['--no-progress'])
            out, err = StringIO(), StringIO()
            try:
                with redirect_stdout(out), redirect_stderr(err):
                    code = main(args)
            except BaseException as error:  # noqa: BLE001 - every failing command is reported
                code, err = f'{type(error).__name__}: {error}', StringIO(str(error))
            if code != expected or 'Traceback' in err.getvalue():
                failures.append(f'{document.name}:{line}: pyable-tio {" ".join(args)} -> {code} (expected {expected}):'
                                f' {err.getvalue().strip()[-400:]}')
    assert not failures, '\n'.join(failures)


def test_value_comments_are_checked_and_prose_is_not():
    assert stated_value(' torch.Size([2, 20, 28, 32])  C, D, H, W') == 'torch.Size([2, 20, 28, 32])'
    assert stated_value(" '.../sub-01_t1.nii.gz'") == "'.../sub-01_t1.nii.gz'"
    for prose in (' reads the files', ' C x D x H x W', ' torch, numpy, random', ' e.g. (2.0, 2.4), x,y,z', ' 1 x D x H x W'):
        assert stated_value(prose) is None, prose
    assert value_matches((1, 'xyz', (1.0, 1.5)), "1, 'xyz', (1.0, 1.5)")
    assert value_matches('/tmp/a/sub-01_t1.nii.gz', "'.../sub-01_t1.nii.gz'")
    assert not value_matches([1, 2], '[1, 3]')
    failures: list[str] = []
    code, checked, check = checked_code('x = [1, 2]\nx  # [1, 3]\nlen(x)  # 2\nprint(x)  # [1, 2]\n', 'page.md:10', failures)
    namespace = {'__doc_check__': check, '__doc_print__': _print_through}
    exec(code, namespace)
    assert checked == 3 and failures == ['page.md:12: x is [1, 2], the comment says [1, 3]']


def test_python_blocks_are_found_indented_and_marked(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text('# t\n\n```python\nx = 1\n```\n\n- item:\n  ```python\n  y = x + 1\n  ```\n\n'
                    '<!-- not-run: needs a GPU -->\n```python\nz = torch.ones(1).cuda()\n```\n\n```text\nno\n```\n')
    assert python_blocks(page) == [(3, 'x = 1\n', None), (8, 'y = x + 1\n', None),
                                   (13, 'z = torch.ones(1).cuda()\n', 'needs a GPU')]
