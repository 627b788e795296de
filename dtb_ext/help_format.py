"""The help format shared by every `dtb` subcommand. It sits below all the packages, so that a subcommand's module
(qa/cli.py, search/cli.py, ...) does not import the `dtb` entry point (cli.py), which imports it back."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after an option's help, except where it says nothing: no default (None), an off
    flag, or a help text that already states its default in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        # identity, not equality: a default of 0 or 0.0 compares equal to False and must still be shown
        if action.default is None or action.default is False or "(default" in help_text:
            return help_text
        return super()._get_help_string(action)
