"""Every `dtb` subcommand answers `--help` (argparse formats each option's help text only then)."""
from __future__ import annotations

import argparse

import pytest

from dtb_ext.cli import build_parser, main


def _subcommands() -> list[str]:
    actions = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


def test_every_command_module_registers_a_subcommand():
    assert {"score", "eval", "train", "search", "pick", "demo"} <= set(_subcommands())


@pytest.mark.parametrize("command", _subcommands())
def test_help_prints_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--help" in capsys.readouterr().out
