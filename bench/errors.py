"""Errors that the command line turns into one clear line and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user (unknown model, malformed grid, missing data root, ...).

    The `vtbench` command line catches it, prints its message on one line and exits 2.
    Library code raises it (or a plain ValueError) instead of printing.
    """
