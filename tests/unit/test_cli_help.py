"""The command line's first-run manners: `labwarden --version`, and help with examples for
every command (labwarden/cli/helptext.py)."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from labwarden import __version__
from labwarden.cli import main
from labwarden.cli.helptext import COMMANDS

ALL = ("up", "down", "status", "matrix", "diff", "init", "learn")  # init, learn: their own HELP


def test_version_is_the_packages():
    assert __version__ == importlib.metadata.version("labwarden")  # pyproject.toml and labwarden/__init__.py agree
    script = Path(sys.executable).parent / "labwarden"  # the installed command, else the module
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "labwarden.cli"]
    proc = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == f"labwarden {__version__}\n", proc.stdout + proc.stderr


def test_every_command_has_help_and_examples():
    assert set(COMMANDS) == set(ALL) - {"init", "learn"}


@pytest.mark.parametrize("command", ALL)
def test_command_help_exits_0_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert f"usage: labwarden {command}" in out and COMMANDS.get(command, ("",))[0] in out
    assert f"examples:\n  labwarden {command}" in out, out
    usage = out.split("\n\n")[0]
    assert "--lw-" not in usage  # the CLI's own option names


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "--version" in out and "examples:" in out
    assert all(f"    {command}  " in out for command in ALL), out
