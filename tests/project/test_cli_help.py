"""Every `dtb` subcommand answers `--help` (argparse formats each option's help text only then)."""
from __future__ import annotations

import argparse

import pytest

from dtb_ext.cli import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    actions = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def _subcommands() -> list[str]:
    return sorted(_subparsers())


def test_every_command_module_registers_a_subcommand():
    assert {"score", "eval", "train", "search", "pick", "demo"} <= set(_subcommands())


@pytest.mark.parametrize("command", _subcommands())
def test_help_prints_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--help" in capsys.readouterr().out


@pytest.mark.parametrize("command", _subcommands())
def test_help_states_a_default_at_most_once_and_never_none(command):
    parser = _subparsers()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        text = formatter._expand_help(action)
        assert text.count("(default") <= 1, f"{command} {action.option_strings}: {text}"
        assert "(default: None)" not in text and "(default: False)" not in text, f"{command}: {text}"


def test_help_shows_zero_defaults():
    """0 and 0.0 are real defaults worth stating, though they compare equal to False."""
    train = _subparsers()["train"]
    formatter = train._get_formatter()
    weight = next(action for action in train._actions if "--kd-hidden-weight" in action.option_strings)
    assert "(default: 0.0)" in formatter._expand_help(weight)
