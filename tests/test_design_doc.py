"""docs/design.md stays true: every file its layout and "How to add …" lists exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = (ROOT / "docs" / "design.md").read_text()
# Each "How to add" paragraph and the built-in that stands in for NAME there.
EXAMPLES = {"A task family": "sinusoid", "A model": "mlp", "An inner optimiser": "sgd", "A framework": "jax"}


def how_to_add_paths() -> list[tuple[str, str]]:
    section = DESIGN.split("## How to add …", 1)[1].split("\n## ", 1)[0]
    out = []
    for block in section.split("\n\n**")[1:]:
        title = block.split("**", 1)[0].strip(" *")
        example = EXAMPLES[title]
        for path in re.findall(r"`([A-Za-z_./]+/[A-Za-z_./]+\.py)`", block):
            out.append((title, path.replace("NAME", example)))
    return out


@pytest.mark.parametrize(("what", "path"), how_to_add_paths(), ids=lambda v: str(v))
def test_every_file_a_how_to_add_list_names_exists(what, path):
    assert (ROOT / path).is_file(), f"docs/design.md, {what}: {path} does not exist"


def test_the_how_to_add_lists_name_each_table():
    paths = {p for _, p in how_to_add_paths()}
    assert {
        "parity/families/__init__.py",
        "parity/models/__init__.py",
        "parity/inner.py",
        "parity/registry.py",
    } <= paths
    assert len(paths) >= 12


def test_every_parity_module_is_in_the_layout():
    layout = DESIGN.split("## Layout: one rule", 1)[1].split("## ", 1)[0]
    missing = [
        p.relative_to(ROOT / "parity").as_posix()
        for p in (ROOT / "parity").glob("*.py")
        if p.stem not in ("__init__", "__main__") and p.name not in layout and p.stem + "*" not in layout
    ]
    assert not missing, f"parity modules docs/design.md's layout does not list: {missing}"
