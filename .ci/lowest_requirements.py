"""Print the lowest supported version of each core dependency, one `name==version` a line: the lower bound of
every range in pyproject.toml's [project].dependencies (torch is exact already). CI installs these once and runs
the model and encoder tests against them, so the ranges' lower ends are versions that were tested."""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def lowest(requirement: str) -> str:
    """`name==X` for a requirement `name>=X,<Y` or `name==X`; ValueError for one without a lower bound."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+)\s*(?:>=|==)\s*([^,;\s]+).*", requirement)
    if match is None:
        raise ValueError(f"{requirement!r} has no lower bound (>=) or exact version (==) to test")
    return f"{match.group(1)}=={match.group(2)}"


def main() -> int:
    with open(PYPROJECT, "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    print("\n".join(lowest(requirement) for requirement in dependencies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
