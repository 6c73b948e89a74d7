"""Where framework code lives: no framework name in ``parity/`` code outside the registry's table.

``parity/**/*.py`` is tokenised (``tokenize``): every NAME and STRING token is split into words
(``jax_impl`` -> ``jax``, ``impl``; ``"JAX_ENABLE_X64"`` -> ``jax``, ``enable``, ``x64``), and a word
that names a framework fails the test. Docstrings and comments are prose about the code and are
skipped. ``parity/registry.py`` is the table that names the built-ins; ``parity/devices.py``
spells the device vocabulary every command accepts (``cuda:N`` is a device, not a framework).
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORK_WORDS = frozenset("jax jaxlib optax flax jnp torch torchrun torchvision xla hlo cuda cudnn nccl gloo".split())
EXEMPT = {"parity/registry.py": FRAMEWORK_WORDS, "parity/devices.py": frozenset({"cuda"})}
# Names other owners still hold, each to be removed (the count may only go down: a stale
# allowance fails too). cli: torchrun's environment and the JAX x64 word list, until the command
# line asks the adapters; report/golden/pytest_plugin: help and prose strings naming the twins.
PENDING: dict[str, int] = {}


def _docstring(tokens: list[tokenize.TokenInfo], i: int, previous: int | None) -> bool:
    """A STRING that is a statement of its own (a docstring, or a bare string as a comment)."""
    if previous not in (None, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
        return False
    rest = (t for t in tokens[i + 1 :] if t.type not in (tokenize.NL, tokenize.COMMENT))
    following = next(rest, None)
    return following is None or following.type in (tokenize.NEWLINE, tokenize.ENDMARKER)


def framework_names(source: str, allowed: frozenset[str] = frozenset()) -> list[tuple[int, str]]:
    """(line, token) of each NAME or STRING token (docstrings aside) with a framework word in it."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    kinds = {tokenize.NAME, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    found, previous = [], None
    for i, token in enumerate(tokens):
        if token.type == tokenize.STRING and _docstring(tokens, i, previous):
            previous = token.type
            continue
        if token.type in kinds:
            words = {w.lower() for w in re.findall(r"[A-Za-z][a-z0-9]*|[A-Z0-9]+", token.string)}
            words |= {w.lower() for w in re.findall(r"[A-Za-z0-9]+", token.string)}
            if (words & FRAMEWORK_WORDS) - allowed:
                found.append((token.start[0], token.string))
        if token.type not in (tokenize.NL, tokenize.COMMENT):
            previous = token.type
    return found


def test_the_scanner_finds_names_in_code_and_strings_but_not_in_prose():
    source = (
        '"""The jax twin."""\n'
        "import os  # torch is fine in a comment\n"
        "def f():\n"
        '    """Docstring naming torch."""\n'
        '    flag = os.environ.get("JAX_ENABLE_X64")\n'
        "    from jax_impl import bench\n"
        '    return f"{flag} on cuda:0", "numpy"\n'
    )
    assert [line for line, _ in framework_names(source)] == [5, 6, 7]


def test_no_framework_name_in_parity_outside_the_registry():
    offenders: dict[str, list[tuple[int, str]]] = {}
    for path in sorted((ROOT / "parity").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        found = framework_names(path.read_text(encoding="utf-8"), EXEMPT.get(rel, frozenset()))
        lines = {line for line, _ in found}
        if len(lines) != PENDING.get(rel, 0):
            offenders[rel] = found
    assert not offenders, "\n".join(
        f"{rel}: {len({n for n, _ in found})} lines, allowed {PENDING.get(rel, 0)}: {found[:6]}"
        for rel, found in offenders.items()
    )


def test_importing_the_command_line_imports_no_framework():
    code = (
        "import sys; import parity.cli, parity.bench, parity.environment, parity.startup, parity.scaling; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'jax', 'jaxlib', 'optax', 'torch', 'jax_impl', 'torch_impl', 'matplotlib'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """The parity modules a module imports when it is imported (not inside functions or TYPE_CHECKING)."""
    import ast

    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for item in ast.walk(node):
            if isinstance(item, ast.ImportFrom) and item.module and item.level == 0:
                submodules = {f"{item.module}.{a.name}" for a in item.names} & modules
                # `from package import submodule` imports the submodule; anything else, the module
                out |= submodules if submodules else {item.module} & modules
            elif isinstance(item, ast.Import):
                out |= {a.name for a in item.names} & modules
    return out


def test_parity_has_no_import_cycle():
    files = {}
    for path in ROOT.glob("parity/**/*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path
    graph = {name: _module_imports(path, set(files)) for name, path in files.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                cycle = [*path[path.index(other) :], other]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if other not in state:
                visit(other, [*path, other])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert len(graph) > 40  # every module was read
