"""Every code block that README.md or docs/ tells a user to run works as written.

A fenced block tagged `python` runs as a script; one tagged `sh` runs line by line (a command may continue over
lines ending in a backslash). Both run in a fresh temporary directory, offline, with this environment's `dtb`
and `python` first on PATH. HTML comments on the lines just above a block can change how it is checked:

- `<!-- run: COMMAND -->` (one or more): run these quick variants instead of the block's commands, whose full
  run is long (a search, a training epoch). Each variant must use the same `dtb` subcommands as the block.
- `<!-- covered-by: PATH -->`: the block runs elsewhere: in CI (`.ci/run`) or a test file that starts a server.
  The check is that PATH exists and runs each of the block's commands (the first two words of each).

Untagged blocks are output shown to the reader, not commands.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest
from repo_paths import REPO_ROOT

ROOT = REPO_ROOT
DOCS = ["README.md"] + sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
                              if name.endswith(".md"))
RUNNABLE = ("python", "sh")
README_MAX_LINES = 150
TIMEOUT_S = 900

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Block:
    """One fenced code block of a document: where it is, its language, its text and the notes above it."""

    document: str
    line: int
    language: str
    text: str
    quick_runs: tuple[str, ...]
    covered_by: str | None

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"

    def commands(self) -> list[str]:
        """The shell commands of an `sh` block: continuation lines joined, comments and blank lines dropped."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        return [line.split(" #")[0].strip() for line in joined.splitlines()
                if line.strip() and not line.strip().startswith("#")]


def read_blocks(document: str) -> list[Block]:
    """Every fenced block of `document` (a path relative to the repository root)."""
    with open(os.path.join(ROOT, document), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = re.fullmatch(r"```(\w*)\s*", lines[index])
        if opening is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        notes, above = [], index - 1
        while above >= 0 and lines[above].startswith("<!--"):
            notes.insert(0, lines[above])
            above -= 1
        quick = tuple(m.group(1).strip() for m in (re.fullmatch(r"<!-- run: (.*) -->", n) for n in notes) if m)
        covered = [m.group(1).strip() for m in (re.fullmatch(r"<!-- covered-by: (.*) -->", n) for n in notes) if m]
        blocks.append(Block(document, index + 1, opening.group(1), "\n".join(lines[index + 1:end]), quick,
                            covered[0] if covered else None))
        index = end + 1
    return blocks


BLOCKS = [block for document in DOCS for block in read_blocks(document) if block.language in RUNNABLE]
RUN_HERE = [block for block in BLOCKS if block.covered_by is None]
COVERED = [block for block in BLOCKS if block.covered_by is not None]


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PATH"] = os.path.dirname(sys.executable) + os.pathsep + environment.get("PATH", "")
    environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return environment


def _run(command: list[str], cwd: str, what: str) -> None:
    done = subprocess.run(command, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _subcommands(commands: list[str]) -> set[str]:
    """`dtb X` for each dtb command (the rest of a command line may differ between a block and its variant)."""
    return {" ".join(shlex.split(command)[:2]) for command in commands if command.startswith("dtb ")}


def test_the_documents_have_runnable_blocks():
    assert {"README.md", os.path.join("docs", "design.md")} <= set(DOCS)
    assert any(block.document == "README.md" and block.language == "python" for block in RUN_HERE)


def test_readme_is_one_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        assert len(handle.read().splitlines()) <= README_MAX_LINES


@pytest.mark.parametrize("block", RUN_HERE, ids=lambda block: block.name)
def test_block_runs_as_written(block, tmp_path):
    if block.language == "python":
        script = tmp_path / "example.py"
        script.write_text(block.text + "\n", encoding="utf-8")
        _run([sys.executable, str(script)], str(tmp_path), block.name)
        return
    commands = list(block.quick_runs) or block.commands()
    if block.quick_runs:
        # the quick variants stand for the block: they run the same dtb subcommands
        assert _subcommands(block.quick_runs) <= _subcommands(block.commands()), block.name
    for command in commands:
        if shutil.which(shlex.split(command)[0], path=_environment()["PATH"]) is None:
            pytest.fail(f"{block.name}: {command!r} names a program that is not installed")
        _run(["bash", "-c", command], str(tmp_path), f"{block.name}: {command}")


@pytest.mark.parametrize("block", COVERED, ids=lambda block: block.name)
def test_covered_block_is_run_where_it_says(block):
    path = os.path.join(ROOT, block.covered_by)
    assert os.path.isfile(path), f"{block.name} says it is covered by {block.covered_by}, which does not exist"
    with open(path, encoding="utf-8") as handle:
        # a script calls its programs by path ("$venv/bin/dtb" eval): compare by program name
        runner = re.sub(r'"?[\w$./{}-]*/bin/([\w-]+)"?', r"\1", handle.read())
    for command in block.commands() if block.language == "sh" else []:
        words = shlex.split(command)[:2]
        # a test file names a subcommand as an argument list entry ("serve"); a script runs the command itself
        assert " ".join(words) in runner or (words[0] == "dtb" and f'"{words[1]}"' in runner) or (
            words[0] == "curl" and "/answer" in runner), f"{block.name}: {command!r} is not run by {block.covered_by}"
    if block.language == "python":
        assert "/answer" in runner, f"{block.name}: {block.covered_by} does not call the server"


def test_the_code_cites_the_design_in_the_repository():
    """The semantics live in docs/design.md; comments and docstrings point there, not to a file outside."""
    stale = []
    for folder in ("dtb_ext", "tests", "bench", "csrc"):
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if not name.endswith((".py", ".cpp", ".h", ".cu", ".md", ".sh")):
                    continue
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
                if "DESIGN" + ".md" in text and path != os.path.abspath(__file__):
                    stale.append(os.path.relpath(path, ROOT))
    assert stale == []
