"""Errors that the command line turns into one clear line (exit code 2 for bad input)."""

import signal


class UsageError(ValueError):
    """Bad input from the user (unknown model, malformed grid, missing data root, ...).

    The `vtbench` command line catches it, prints its message on one line and exits 2.
    Library code raises it (or a plain ValueError) instead of printing.
    """


class UserCodeError(Exception):
    """An exception (or a `sys.exit`) raised by the user's own code: a model factory or its forward.

    The command line prints `error in user code MODULE:CALLABLE: ExcType: message` and exits 1:
    the input was well-formed, the user's code failed while it ran. The original exception is
    chained (`__cause__`), so `-v` still shows where it was raised.
    """

    def __init__(self, where: str, exc: BaseException) -> None:
        self.where = where
        self.original = exc
        super().__init__(f"error in user code {where}: {describe_exception(exc)}")


class MeasurementError(RuntimeError):
    """A measurement that ended without a result for a reason that is not a bug in vtbench: a
    training that diverged, an evaluation that gave NaN. The command line prints it on one line
    (its traceback under -v) and exits 1; a grid cell records it as an error."""


def describe_exception(exc: BaseException) -> str:
    """'ExcType: first line of its message' (a SystemExit says its exit code)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: sys.exit({exc.code!r}) called"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a command that has jobs of its own to settle (`vtbench launch`).

    A KeyboardInterrupt, so that code which lets Ctrl-C through lets this through too. The command
    line prints `message` on one line and exits 128 + `signum` (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        self.message = message or f"interrupted by {signal.Signals(signum).name}"
        super().__init__(self.message)
