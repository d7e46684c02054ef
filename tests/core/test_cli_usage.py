"""Every ``f3stream`` command reports a usage error as one line and exit status 2."""

import argparse

import pytest

from f3stream.cli import build_parser, main


def _commands() -> list[str]:
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(subs.choices)


def test_there_are_commands_to_check():
    assert {"encode", "decode", "serve", "mic", "tokenize", "eval", "bench"} <= set(_commands())


@pytest.mark.parametrize("command", _commands())
def test_a_usage_error_is_one_line_exit_2(command, capsys):
    """An unknown option (or, first, a missing positional argument) of every command."""
    assert main([command, "--no-such-option-f3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"f3stream {command}: error: ")
    assert err[0].endswith(f"(see f3stream {command} --help)")
    assert "--no-such-option-f3" in err[0] or "required" in err[0]


def test_unknown_option_names_the_option_and_the_command(capsys):
    assert main(["info", "--no-such-option-f3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("f3stream info: error: unrecognized arguments: --no-such-option-f3 "
                   "(see f3stream info --help)")


def test_missing_argument_and_missing_command_are_one_line(capsys):
    assert main(["encode"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "required: INPUT" in err[0], err
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("f3stream: error: ") and "COMMAND" in err[0]


def test_help_still_prints_the_usage(capsys):
    assert main(["encode", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: f3stream encode")
