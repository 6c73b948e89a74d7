"""Every command in the README's bash blocks runs as written, shortened to a few iterations.

The commands run in README order in one scratch folder (so `eval runs/a` finds what `train ... --out
runs/a` wrote), with `maml-parity` as `python -m parity` and `torchrun` as
`python -m torch.distributed.run` (gloo on a CPU). Shortening only appends flags, which argparse
lets override the README's own: `train` and `demo` get `--iterations 3`, `eval` a few tasks and
steps, `check` a few cases. Not run: `pip install` (the environment is installed already) and
`pytest` (this suite itself).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SHORTER = {
    "train": ["--iterations", "3", "--no-progress"],
    "demo": ["--iterations", "3", "--no-progress"],
    "eval": ["--tasks", "4", "--max-steps", "2", "--pretrain-steps", "2"],
    "check": ["--quick", "--cases", "T1-"],
}


def readme_commands(text: str) -> list[str]:
    """The shell commands of the fenced ```bash blocks: continuation lines joined, comments and
    blank lines dropped, `a && b` split into its parts."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def readme_example(text: str) -> str:
    """The README's complete example implementation: its ```python block that defines ``IMPL``."""
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE) if "IMPL = " in b]
    assert len(blocks) == 1, "the README shows one complete implementation"
    return blocks[0]


def runnable(command: str) -> bool:
    return "pip install" not in command and "pytest" not in command


COMMANDS = [c for c in readme_commands((ROOT / "README.md").read_text()) if runnable(c)]


def test_the_readme_has_the_commands_this_test_expects():
    text = (ROOT / "README.md").read_text()
    everything = readme_commands(text)
    # The two commands at the top, exactly.
    assert everything[:4] == [
        "python3 -m pip install -c constraints.txt -e .",
        "maml-parity demo",
        'python3 -m pip install -c constraints.txt -e ".[test]"',
        'python3 -m pytest -m "not slow"',
    ]
    subcommands = {shlex.split(c)[1] if c.startswith("maml-parity") else shlex.split(c)[0] for c in COMMANDS}
    assert {"demo", "train", "eval", "report", "dump", "check", "torchrun"} <= subcommands


def argv(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0] == "maml-parity":
        words = [sys.executable, "-m", "parity", *words[1:]]
    elif words[0] == "torchrun":
        words = [sys.executable, "-m", "torch.distributed.run", *words[1:]]
    else:
        raise AssertionError(f"a README command this test does not know how to run: {command}")
    sub = next(w for w in words[3:] if w in SHORTER or w in ("dump", "report", "bench")) if "parity" in words else ""
    return words + SHORTER.get(sub, [])


def _param(command: str) -> object:
    # Each command starts a framework in a fresh process (seconds before any work): all are slow.
    return pytest.param(command, marks=[pytest.mark.slow], id=" ".join(command.split()[:3]))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("command", [_param(c) for c in COMMANDS])
def test_readme_command_runs(command, workdir):
    if "mine.py" in command:  # the README's example implementation, saved as it says
        (workdir / "mine.py").write_text(readme_example((ROOT / "README.md").read_text()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cwd = ROOT if "examples/" in command else workdir  # a path into the checkout; such commands write nothing
    result = subprocess.run(argv(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
