"""User-facing errors: each message names the problem and the fix.

The CLI prints a `KinemaError` as one line and exits with code 2 (bad input);
anything else is an internal failure (exit code 1, with a traceback).
"""


class KinemaError(Exception):
    """Bad input from the user: a file, an argument or a config that cannot be used."""
