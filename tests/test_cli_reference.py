"""docs/cli.md is generated from the argparse parsers (scripts/gen_cli_reference.py): the committed
page must be what the parsers give today, so the reference cannot drift from `vtbench --help`."""

import argparse
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", ROOT / "scripts" / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_matches_the_parsers():
    gen = _generator()
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == gen.render(), "docs/cli.md is out of date: run python scripts/gen_cli_reference.py"


def test_reference_names_every_command_and_every_visible_flag():
    from bench.cli import build_parser

    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    gen = _generator()
    commands = gen._subcommands(build_parser())
    assert [name for name, _, _ in commands][:6] == ["models", "profile", "train", "launch", "status", "cancel"]
    for name, _, cmd in commands:
        assert f"## vtbench {name}\n" in page
        for action in filter(gen._shown, cmd._actions):
            assert f"`{gen._spelling(action)}`" in page


def test_a_changed_parser_changes_the_page():
    """The page follows the parser: a new flag appears with its help, a removed one disappears."""
    gen = _generator()
    parser = argparse.ArgumentParser(prog="vtbench")
    sub = parser.add_subparsers(dest="command")
    cmd = sub.add_parser("demo", help="a demo command", description="A demo command.")
    cmd.add_argument("--speed", choices=["slow", "fast"], default="slow", help="pace (default %(default)s)")
    cmd.add_argument("--hidden", help=argparse.SUPPRESS)
    page = gen.render(parser)
    assert "| `--speed {slow,fast}` | pace (default slow) (one of: slow, fast) |" in page
    assert "--hidden" not in page.split("## vtbench demo")[1].split("```")[2]
    assert "[`demo`](#vtbench-demo) | a demo command |" in page
