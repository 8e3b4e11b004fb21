"""The `vtbench` command line: a thin dispatcher over `bench.commands.*`.

Each command module exposes `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`.
`main` is glue: it parses, configures logging, and turns bad input into exit code 2 with one line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from bench.errors import UsageError

COMMAND_MODULES = (
    "bench.commands.models",
    "bench.commands.profile",
    "bench.commands.train",
    "bench.commands.launch",
    "bench.commands.status",
    "bench.commands.interleave",
    "bench.commands.report",
)

log = logging.getLogger("vtbench")


class _Parser(argparse.ArgumentParser):
    """argparse already exits 2 on bad arguments; keep its message to one line."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one sub-parser per command module."""
    parser = _Parser(prog="vtbench", description="Benchmark and ablation harness for Visual Transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vtbench` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._run(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as exc:
        if args.verbose:
            log.exception("bad input")
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"vtbench {args.command}: error: {first_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
