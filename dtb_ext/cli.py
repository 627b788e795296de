"""The `dtb` command. Each subcommand lives beside the code it drives, in a module that exposes
`register(subparsers)`; this file only lists those modules. Their shared help format is help_format.py."""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules whose `register(subparsers)` adds subcommands, in the order `dtb --help` lists them.
COMMAND_MODULES: list[str] = [
    "dtb_ext.qa.cli",
    "dtb_ext.train.cli",
    "dtb_ext.search.cli",
    "dtb_ext.demo.cli",
    "dtb_ext.serve.cli",
    "dtb_ext.graph_export.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtb",
        description="Dynamic-TinyBERT: length-adaptive BERT inference, training, search and evaluation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
