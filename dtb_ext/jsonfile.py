"""Reading the project's JSON inputs (SQuAD files, predictions, fronts, model configs) with errors a user can act on."""
from __future__ import annotations

import json
import os
from typing import Any


def read_json_file(path: str, what: str, expected: str) -> Any:
    """Parse the JSON file at `path`.

    Args:
        what: the kind of file, for the missing-file message ("SQuAD file", "front file", ...).
        expected: what its content should be, for both messages.

    Raises:
        ValueError: the file is missing or is not valid JSON.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{what} not found: expected {expected}, got path {path!r}")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); expected {expected}") from error
