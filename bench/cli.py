"""The `vtbench` command line: a thin dispatcher over `bench.commands.*`.

Each command module exposes `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`.
`main` is glue: it parses, configures logging, and turns bad input into exit code 2 with one line.
Failures that are not bad input also end in one line on stderr, with exit code 1: an OS error
(the path and its strerror; 2 when it is EPERM/EACCES/ENOTDIR/EEXIST/EISDIR on a path the user
gave), an exception or `sys.exit` in the user's own code (`error in user code MODULE:CALLABLE:
ExcType: message`), and a refused submission (sbatch's last line). `-v` adds the traceback.
SIGINT or SIGTERM to `vtbench launch` ends in its one line (which cells it cancelled) and exit code
130 or 143 (`bench.errors.Interrupted`); a Ctrl-C elsewhere prints "interrupted" and exits 130.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from bench.errors import Interrupted, UsageError, UserCodeError, describe_exception

COMMAND_MODULES = (
    "bench.commands.models",
    "bench.commands.profile",
    "bench.commands.train",
    "bench.commands.launch",
    "bench.commands.status",
    "bench.commands.cancel",
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
        where = None if isinstance(exc, UsageError) else _user_code_frame(exc)
        if where is not None:  # raised by the user's forward or helper: their code failed, not the input
            return _report(args, str(UserCodeError(where, exc)), 1)
        if args.verbose:
            log.exception("bad input")
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"vtbench {args.command}: error: {first_line}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # SIGINT/SIGTERM to a command that settled its own jobs first
        print(f"vtbench {args.command}: {exc.message}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - each kind below gets one line; the rest re-raise
        described = _describe_failure(exc, args)
        if described is None:
            raise  # a bug in vtbench itself: its traceback is what a bug report needs
        return _report(args, *described)


def _report(args: argparse.Namespace, message: str, code: int) -> int:
    """Print one line on stderr (the traceback too under -v) and return the exit code."""
    if args.verbose:
        log.exception("failed")
    print(f"vtbench {args.command}: error: {message}", file=sys.stderr)
    return code


# errno values that, on a path the user typed, are bad input (exit 2) rather than a failed run.
_USER_PATH_ERRNOS = (errno.EPERM, errno.EACCES, errno.ENOTDIR, errno.EEXIST, errno.EISDIR)


def _describe_failure(exc: Exception, args: argparse.Namespace) -> tuple[str, int] | None:
    """(one-line message, exit code) for failures that are not vtbench bugs, else None."""
    if isinstance(exc, UserCodeError):
        return str(exc), 1
    if isinstance(exc, OSError) and not isinstance(exc, subprocess.SubprocessError):
        return _describe_os_error(exc, args)
    if isinstance(exc, subprocess.CalledProcessError) or _is_submitit_failure(exc):
        return f"{type(exc).__name__}: {_last_line(exc)}", 1
    where = _user_code_frame(exc)
    if where is not None:
        return str(UserCodeError(where, exc)), 1
    return None


def _describe_os_error(exc: OSError, args: argparse.Namespace) -> tuple[str, int]:
    """'PATH: strerror'; exit 2 when the path is one the user gave and the errno says 'bad path'."""
    path = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or describe_exception(exc)
    message = f"{path}: {reason}" if path else reason
    if exc.filename2:
        message = f"{path} -> {exc.filename2}: {reason}"
    code = 2 if exc.errno in _USER_PATH_ERRNOS and _is_user_path(path, args) else 1
    return message, code


def _is_user_path(path: object, args: argparse.Namespace) -> bool:
    """True when `path` is, or lies under, a path given on the command line."""
    if not path:
        return False
    target = Path(os.fsdecode(path)).absolute()
    for value in vars(args).values():
        if isinstance(value, str) and value and not value.startswith("-"):
            given = Path(value).absolute()
            if target == given or given in target.parents:
                return True
    return False


def _is_submitit_failure(exc: Exception) -> bool:
    """submitit wraps a refused sbatch (e.g. a bad SLURM_CONF) in FailedJobError."""
    return any(cls.__module__.startswith("submitit") for cls in type(exc).__mro__)


def _last_line(exc: Exception) -> str:
    """The last non-empty line of the error (sbatch and job logs end with the actual error)."""
    text = str(getattr(exc, "stderr", None) or exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_LIBRARY_ROOTS = tuple(Path(p).resolve() for p in {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")})


def _user_code_frame(exc: BaseException) -> str | None:
    """'module:qualname' of the outermost traceback frame in the user's code, else None.

    User code is what is neither vtbench (bench/, models/) nor the standard library nor an
    installed package: a forward of `mypkg.nets:Net` that raises is reported as the user's error.
    """
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if _is_user_file(frame.f_code.co_filename):
            name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
            return f"{frame.f_globals.get('__name__', '?')}:{name}"
        tb = tb.tb_next
    return None


def _is_user_file(filename: str) -> bool:
    if not filename or filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    inside = (_PROJECT_ROOT / "bench", _PROJECT_ROOT / "models", *_LIBRARY_ROOTS)
    return not any(root == path or root in path.parents for root in inside)


if __name__ == "__main__":
    sys.exit(main())
