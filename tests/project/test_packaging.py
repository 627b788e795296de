"""The source distribution, built from a copy of the checkout as `python -m build --sdist --no-isolation` does:
it holds every csrc/ file of the repository, the build, licence and C++ test files and the package data the
commands default to, and none of a build's outputs. (.ci/run installs it into a fresh venv and runs it.)"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
from repo_paths import REPO_ROOT

ROOT = REPO_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")),
                       reason="needs git and a repository checkout"),
]


def repository_files() -> list[str]:
    """The checkout's files: tracked ones, and untracked ones git does not ignore (new files before their commit)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return sorted(path for path in listed if os.path.isfile(os.path.join(ROOT, path)))


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> str:
    """The path of an sdist built from a clean copy of the checkout."""
    checkout = tmp_path_factory.mktemp("checkout")
    for path in repository_files():
        os.makedirs(os.path.dirname(checkout / path), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, path), checkout / path)
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(dist),
                            str(checkout)], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (tarball,) = dist.glob("dtb_ext-*.tar.gz")
    return str(tarball)


@pytest.fixture(scope="module")
def sdist_files(sdist) -> set[str]:
    """Paths (relative to the sdist's top folder) of the files in the sdist."""
    with tarfile.open(sdist) as archive:
        names = [member.name for member in archive.getmembers() if member.isfile()]
    top = names[0].split("/", 1)[0]
    assert all(name.startswith(top + "/") for name in names)
    return {name[len(top) + 1:] for name in names}


def test_sdist_holds_every_csrc_file_of_the_repository(sdist_files):
    in_repository = {path for path in repository_files() if path.startswith("csrc/")}
    in_sdist = {path for path in sdist_files if path.startswith("csrc/")}
    assert in_sdist == in_repository, (f"missing: {sorted(in_repository - in_sdist)}, "
                                       f"not in the repository: {sorted(in_sdist - in_repository)}")


def test_sdist_holds_the_build_licence_and_cpp_test_files(sdist_files):
    needed = ["setup.py", "pyproject.toml", "CMakeLists.txt", "README.md", "LICENSE", "constraints.txt"]
    needed += [path for path in repository_files() if path.startswith("tests/cpp/")]
    assert [path for path in needed if path not in sdist_files] == []


def test_sdist_holds_the_package_data(sdist_files):
    needed = ["dtb_ext/data/search_articles.json", "dtb_ext/data/squad/dev-a-v1.1.json",
              "dtb_ext/data/squad/README.md", "dtb_ext/data/squad/LICENSE-CC-BY-SA-4.0.txt"]
    needed += [path for path in repository_files() if path.startswith("dtb_ext/default_model/")]
    assert [path for path in needed if path not in sdist_files] == []


def test_sdist_holds_no_build_outputs(sdist_files):
    outputs = [path for path in sdist_files
               if path.endswith((".so", ".o", ".pyc")) or path.startswith("build/") or "__pycache__" in path]
    assert outputs == []


def test_shipped_text_files_hold_no_machine_paths():
    """Package data (model cards, training records, fronts, READMEs) is read on other machines: a path of the
    machine that wrote it (/work/..., /root/..., /home/..., /tmp/...) means nothing there."""
    machine_path = re.compile(r"(?<![\w.])/(work|root|home|tmp)/")
    shipped = [path for path in repository_files() if path.startswith("dtb_ext/")
               and path.endswith((".md", ".json", ".csv", ".txt")) and "/data/squad/" not in path]
    assert shipped
    found = []
    for path in shipped:
        with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
            found += [f"{path}:{number}" for number, line in enumerate(handle, 1) if machine_path.search(line)]
    assert found == []


def test_sdist_metadata_pins_only_torch_exactly(sdist):
    """A user installs dtb_ext beside their own stack: every requirement but torch (the extension is built
    against it) is a range from a tested lower bound to below the next major."""
    with tarfile.open(sdist) as archive:
        (info,) = [member for member in archive.getmembers() if member.name.count("/") == 1
                   and member.name.endswith("/PKG-INFO")]
        metadata = archive.extractfile(info).read().decode()
    requirements = [
        line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    assert "torch==2.13.0" in requirements
    others = [requirement.split(";")[0] for requirement in requirements if not requirement.startswith("torch")]
    assert others and [r for r in others if "==" in r] == []
    # the `all` extra names the others (dtb_ext[train,...]); every other requirement has both ends
    unbounded = [r for r in others if not r.startswith("dtb_ext[")
                 and not (re.search(r">=\s*\d", r) and re.search(r"<\s*\d", r))]
    assert unbounded == []
