"""Every default path of the library, in one place: what the commands use when no file is given.

Shipped inside the package (found next to this file, in a checkout and in an installed package alike):
- `DEV_FILE`: SQuAD 1.1 dev-a, the 24-article half of the official dev set (4,961 questions; CC BY-SA 4.0, see
  data/squad/README.md): the default of `dtb demo`, `dtb eval` and `dtb train --eval-data`;
- `SEARCH_ARTICLES_FILE`: the titles of the training articles held out for the length-configuration search, and
  `SEARCH_SPLIT_FILE`: their questions' ids, split into search and confirmation parts;
- `DEV_SPLIT_FILE`: dev-a's question ids split by whole articles into a confirmation part (where a certified
  search's `pick` decides) and a report part (where its numbers are reported);
- `DEFAULT_MODEL_DIR`: the default QA model and its front.

Not shipped: the SQuAD training articles, which `dtb train` trains on and from which `dtb search` takes the
search split. A repository checkout finds them in the shared data folder beside it (`SHARED_SQUAD_DIR`); an
installed package is told to pass a file (`training_file`).
"""
from __future__ import annotations

import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL_DIR = os.path.join(PACKAGE_DIR, "default_model")
SEARCH_ARTICLES_FILE = os.path.join(PACKAGE_DIR, "data", "search_articles.json")
SEARCH_SPLIT_FILE = os.path.join(PACKAGE_DIR, "data", "search_split.json")
DEV_FILE = os.path.join(PACKAGE_DIR, "data", "squad", "dev-a-v1.1.json")
DEV_SPLIT_FILE = os.path.join(PACKAGE_DIR, "data", "dev_split.json")
# ../shared/data/squad beside the repository root (this file is <root>/dtb_ext/data_paths.py).
SHARED_SQUAD_DIR = os.path.normpath(os.path.join(PACKAGE_DIR, "..", "..", "shared", "data", "squad"))
TRAIN_SUBSET_NAME = "train-subset-v1.1.json"


def shared_squad_file(name: str) -> str:
    """Path of one file of the shared SQuAD folder beside a checkout, e.g. `shared_squad_file("dev-a-v1.1.json")`;
    it exists only next to a repository checkout."""
    return os.path.join(SHARED_SQUAD_DIR, name)


def training_file(path: str | None, needed_for: str, option: str) -> str:
    """`path` when given; else the shared training subset when it exists; else ValueError saying what to pass.

    needed_for: what the training articles are needed for, e.g. "the search split's articles";
    option: the command-line option (or argument) that takes the file, e.g. "--data".
    """
    if path is not None:
        return path
    default = shared_squad_file(TRAIN_SUBSET_NAME)
    if os.path.isfile(default):
        return default
    raise ValueError(
        f"{needed_for} come from the SQuAD 1.1 training set, which the package does not ship, and the repository's "
        f"copy ({default}) is not there: pass {option} TRAIN.json, the official SQuAD 1.1 training file "
        f"(train-v1.1.json) or any SQuAD-1.1-format file holding those articles, such as a checkout's "
        f"../shared/data/squad/{TRAIN_SUBSET_NAME}"
    )
