"""The README's Quick start and .ci/run stay in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _quick_start_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^## Quick start[ \t]*\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Quick start' section"
    return [block.strip() for block in FENCE.findall(match.group(1))]


@pytest.mark.unit
def test_quick_start_has_two_single_line_commands():
    blocks = _quick_start_blocks()
    assert len(blocks) == 2, blocks
    for block in blocks:
        assert block and "\n" not in block, f"not a single shell line: {block!r}"
    assert "torch==2.13.0" in blocks[0]


@pytest.mark.unit
def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _quick_start_blocks()[1]
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci" / "run").read_text()
