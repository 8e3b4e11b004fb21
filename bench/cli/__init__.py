"""The `vtbench` command line: a thin dispatcher over `bench.cli.commands.*`.

Each command module exposes `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`.
`main` is glue: it parses, configures logging, and turns bad input (a `UsageError`, a missing file,
or a model option that `models.build_model` refused) into exit code 2 with one line.
Failures that are not bad input also end in one line on stderr, with exit code 1: an OS error
(the path and its strerror; 2 when it is EPERM/EACCES/ENOTDIR/EEXIST/EISDIR on a path the user
gave), an exception or `sys.exit` in the user's own code (`error in user code MODULE:CALLABLE:
ExcType: message`), a refused submission (sbatch's last line), and any other exception, vtbench's
own (`ExcType: message (an internal error: run again with -v for the traceback)`). `-v` adds the
traceback.
SIGINT or SIGTERM to `vtbench launch` ends in its one line (which cells it cancelled) and exit code
130 or 143 (`bench.core.errors.Interrupted`); a Ctrl-C elsewhere prints "interrupted" and exits 130.
A reader of stdout that goes away (`| head -1`) ends the command quietly with exit code 141.

`-v/--verbose` and `-q/--quiet` (warnings and errors only) go before or after the command;
`--version` names vtbench, torch, torchvision and fvcore. Only the command named on the line is
imported: the others are listed by the NAME and HELP read from their source, so `vtbench --help`
imports neither torch nor pandas. Two third-party messages that every normal run printed are
dropped here, at the entry, matched by message and origin (`silence_known_noise`).
"""

from __future__ import annotations

import argparse
import ast
import errno
import importlib
import importlib.util
import logging
import os
import platform
import signal
import subprocess
import sys
import sysconfig
import traceback
import warnings
from pathlib import Path
from typing import Sequence

from bench.core.errors import Interrupted, MeasurementError, UsageError, UserCodeError, describe_exception

COMMAND_MODULES = (
    "bench.cli.commands.models",
    "bench.cli.commands.profile",
    "bench.cli.commands.train",
    "bench.cli.commands.launch",
    "bench.cli.commands.status",
    "bench.cli.commands.cancel",
    "bench.cli.commands.interleave",
    "bench.cli.commands.report",
    "bench.cli.commands.speed",
    "bench.cli.commands.fidelity",
)

log = logging.getLogger("vtbench")


class _Parser(argparse.ArgumentParser):
    """argparse already exits 2 on bad arguments; keep its message to one line, and say where an
    unknown flag belongs (`--num-tokens 8`: `--set num_tokens=8`; `--epoch`: `--epochs`)."""

    command_parser: argparse.ArgumentParser | None = None  # the command's own parser, once built

    def error(self, message: str):  # noqa: D401 - argparse API
        prefix = "unrecognized arguments: "
        hint = ""
        if message.startswith(prefix) and self.command_parser is not None:
            hint = unknown_flag_hint(self.command_parser, message[len(prefix):].split(" "))
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def unknown_flag_hint(command: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """'; ...' pointing each unknown `--flag [VALUE]` to `--set flag=VALUE` when it names a model or
    training option and the command takes --set, else to the command's closest flag; '' otherwise."""
    import difflib

    own = [o for o in command._option_string_actions if o.startswith("--")]
    hints = []
    for index, word in enumerate(extras):
        if not word.startswith("--") or word in own:
            continue
        flag, _, value = word.partition("=")
        if not value and index + 1 < len(extras) and not extras[index + 1].startswith("-"):
            value = extras[index + 1]
        key = flag[2:].replace("-", "_")
        kind = settable_option_names().get(key) if "--set" in own else None
        if kind:
            hints.append(f"{flag} is {kind}: --set {key}={value or 'VALUE'}")
            continue
        close = difflib.get_close_matches(flag, own, n=1, cutoff=0.75)
        if close:
            hints.append(f"did you mean {close[0]}?")
    return "; " + "; ".join(hints) if hints else ""


def settable_option_names() -> dict[str, str]:
    """Every option `--set KEY=VALUE` can set -> what it is: every registered model's options and the
    training options (imports the registry, so torch: only asked on the way to an error)."""
    from bench.core.contracts import TrainOptions

    names = dict.fromkeys(TrainOptions.model_fields, "a training option")
    try:
        from models import list_models, model_options
    except ImportError:  # the registry cannot load: the hint is a courtesy, the error stands without it
        return names
    for model in list_models():
        names.update(dict.fromkeys(model_options(model), "a model option"))
    return names


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command module.

    Given `argv`, only the command it names is imported and given its options; the others are
    listed by name and help (`_command_summary`), so `vtbench --help` stays fast. Without `argv`
    every command is built in full.
    """
    parser = _Parser(prog="vtbench", description="Benchmark and ablation harness for Visual Transformers.")
    _add_common_flags(parser, top=True)
    parser.add_argument("--version", action=_VersionAction, help="print the versions of vtbench, torch, "
                                                                 "torchvision and fvcore, and exit")
    common = _Parser(add_help=False)
    _add_common_flags(common, top=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    chosen = None if argv is None else _named_command(argv)
    for module_name in COMMAND_MODULES:
        name, help_text = _command_summary(module_name)
        if argv is not None and name != chosen:
            sub.add_parser(name, help=help_text)  # listed only: never parsed, so never imported
            continue
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP, parents=[common])
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
        if argv is not None:
            parser.command_parser = cmd
    return parser


def _add_common_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-v/-q on the top-level parser and on every command's (where an absent flag leaves the
    top-level value alone: SUPPRESS), so they work before or after the command."""
    default = False if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging, and the traceback of a failure")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="log warnings and errors only (results still go to stdout)")


def _named_command(argv: Sequence[str]) -> str | None:
    """The command on the line: the first word that is not an option (the top-level options take
    no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _command_summary(module_name: str) -> tuple[str, str]:
    """(NAME, HELP) of a command module, read from its source without importing it (they are
    string literals); imported only when the source cannot be read that way."""
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.find_spec(module_name)
        found = _literal_constants(spec.origin, ("NAME", "HELP")) if spec and spec.origin else {}
        if isinstance(found.get("NAME"), str) and isinstance(found.get("HELP"), str):
            return found["NAME"], found["HELP"]
        module = importlib.import_module(module_name)
    return module.NAME, module.HELP


def _literal_constants(path: str, names: tuple[str, ...]) -> dict[str, object]:
    """Module-level `NAME = <literal>` assignments of a Python source file ({} if unreadable)."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    found: dict[str, object] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in names):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return found


class _VersionAction(argparse.Action):
    """--version: computed only when asked (reading package metadata costs a little)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(version_text() + "\n")  # stdout, as argparse's own "version" action
        parser.exit(0)


def version_text() -> str:
    """'vtbench X (torch Y, torchvision Z, fvcore W[, timm V]; Python P)', from package metadata
    (nothing is imported)."""
    from importlib import metadata

    import bench

    parts = []
    for dist in ("torch", "torchvision", "fvcore", "timm"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            if dist != "timm":  # timm is an optional extra: named only when installed
                parts.append(f"{dist} not installed")
    return f"vtbench {bench.__version__} ({', '.join(parts)}; Python {platform.python_version()})"


# Third-party messages that every normal run printed, dropped at the command line's entry (not in
# library code), each matched by its message and where it comes from:
# - fvcore.nn scripts a loss when imported, and torch deprecates `torch.jit.script` with a
#   FutureWarning raised in torch.jit._script (vtbench never scripts anything itself);
# - torch.utils.cpp_extension, imported by torch.utils.benchmark (the CPU latency timer), logs
#   "No CUDA runtime is found, using CUDA_HOME=..." on a machine with a CUDA folder and no GPU.
_QUIET_WARNINGS = ((r"`torch\.jit\.script` is (deprecated|not supported)", FutureWarning, r"torch\.jit\._script"),)
_QUIET_LOG_LINES = (("torch.utils.cpp_extension", "No CUDA runtime is found"),)


class _DropLogLine(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_known_noise() -> None:
    """Install the narrow filters above (idempotent)."""
    for message, category, module in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for logger_name, prefix in _QUIET_LOG_LINES:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropLogLine) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropLogLine(prefix))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vtbench` console script."""
    silence_known_noise()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet together")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader that went away is a BrokenPipeError below
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except (UsageError, ValueError, FileNotFoundError) as exc:
        where = None if isinstance(exc, UsageError) else _user_code_frame(exc)
        if where is not None:  # raised by the user's forward or helper: their code failed, not the input
            return _report(args, str(UserCodeError(where, exc)), 1)
        if not _is_bad_input(exc):
            return _report_internal(args, exc)
        if args.verbose:
            log.exception("bad input")
        print(f"vtbench {args.command}: error: {_first_line(exc)}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # SIGINT/SIGTERM to a command that settled its own jobs first
        print(f"vtbench {args.command}: {exc.message}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - each kind below gets one line, as does anything else
        described = _describe_failure(exc, args)
        if described is None:
            return _report_internal(args, exc)
        return _report(args, *described)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_bad_input(exc: Exception) -> bool:
    """UsageError, a missing file, or a ValueError that a model's builder raised about the options the
    user gave (`models.build_model` and the constructors under it check them; models/ cannot raise
    bench's UsageError). Any other ValueError (pandas', vtbench's own) is an internal error."""
    if isinstance(exc, (UsageError, FileNotFoundError)):
        return True
    return _raised_while_building_a_model(exc)


def _raised_while_building_a_model(exc: BaseException) -> bool:
    """True when the traceback passes through `build_model` of models/registry.py, and no `forward`."""
    registry = _PROJECT_ROOT / "models" / "registry.py"
    tb, building = exc.__traceback__, False
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "forward":
            return False
        building = building or (code.co_name == "build_model" and Path(code.co_filename).resolve() == registry)
        tb = tb.tb_next
    return building


def _report_internal(args: argparse.Namespace, exc: BaseException) -> int:
    """An error that is neither bad input nor the user's code nor the machine: vtbench's own, exit 1.
    One line naming the exception and a hint to -v; the traceback itself under -v."""
    if args.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    hint = "" if args.verbose else " (an internal error: run again with -v for the traceback)"
    print(f"vtbench {args.command}: error: {type(exc).__name__}: {_first_line(exc)}{hint}", file=sys.stderr)
    return 1


def _stdout_closed() -> int:
    """The reader of stdout went away (`vtbench models --format json | head -1`): end quietly, with
    141 (128 + SIGPIPE, what a shell reports for a tool that SIGPIPE ended). What is still buffered
    goes to /dev/null, so the interpreter's flush at exit does not raise again (the recipe of
    Python's `signal` documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a file descriptor (a test's capture): nothing to do
        pass
    return 128 + signal.SIGPIPE


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
    if isinstance(exc, MeasurementError):  # a measurement without a result (diverged, NaN): no bug
        return describe_exception(exc), 1
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


_PROJECT_ROOT = Path(__file__).resolve().parents[2]
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
