"""Every ```python block of README.md and docs/*.md runs as written from the
repository root, each in a fresh interpreter, and every install command the
docs print pins torch.

A block that cannot run here (it needs a GPU, or hours) is marked by the line
just above its fence::

    <!-- snippet-test: skip <why> -->

and is reported as skipped with that reason; the list is kept tiny.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = [os.path.join(REPOSITORY, "README.md")] + sorted(glob.glob(os.path.join(REPOSITORY, "docs", "*.md")))
SKIP_MARKER = re.compile(r"<!--\s*snippet-test:\s*skip\s+(?P<why>\S.*?)\s*-->")
MOST_SKIPPED = 3


def python_blocks():
    """(document, first line, code, reason to skip or None) for every ```python block."""
    blocks = []
    for path in DOCUMENTS:
        lines = open(path, encoding="utf-8").read().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```python":
                start = i + 1
                end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
                marker = SKIP_MARKER.search(lines[i - 1]) if i > 0 else None
                blocks.append((os.path.relpath(path, REPOSITORY), start + 1, "\n".join(lines[start:end]),
                               marker.group("why") if marker else None))
                i = end
            i += 1
    return blocks


BLOCKS = python_blocks()


def test_the_docs_have_snippets_and_few_are_skipped():
    assert len(BLOCKS) >= 4
    assert sum(why is not None for *_, why in BLOCKS) <= MOST_SKIPPED


def snippet_params():
    """The blocks as test parameters; those that start Ray carry the "ray" marker."""
    return [pytest.param(document, line, code, why, id=f"{document}:{line}",
                         marks=[pytest.mark.ray] if re.search(r"^\s*import ray\b", code, re.M) else [])
            for document, line, code, why in BLOCKS]


@pytest.mark.parametrize("document, line, code, why", snippet_params())
def test_snippet_runs_from_the_repository_root(document, line, code, why):
    if why is not None:
        pytest.skip(f"marked in {document}: {why}")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{document}:{line} failed:\n{done.stderr[-3000:]}"


def _install_commands():
    sources = DOCUMENTS + sorted(glob.glob(os.path.join(REPOSITORY, "pali_engine", "*.py")))
    for path in sources:
        for number, text in enumerate(open(path, encoding="utf-8").read().splitlines(), 1):
            for match in re.finditer(r"pip install [^`\n\"]*(?:\"[^\"]*\"[^`\n\"]*)*", text):
                yield f"{os.path.relpath(path, REPOSITORY)}:{number}", match.group(0).split(" #")[0]


def test_every_install_command_pins_torch():
    commands = list(_install_commands())
    assert commands
    for where, command in commands:
        # torch itself, or an extra that requires it (export, bench, dev), without the pin
        # resolves to a multi-gigabyte CUDA build
        wants_torch = re.search(r"\btorch\b|\[(?:[^\]]*,)?\s*(?:export|bench|dev)\b", command)
        if wants_torch:
            assert "torch==2.13.0" in command, f"{where}: {command}"
        assert "pali-engine[" not in command, f"{where}: extras of a package index name: {command}"
