"""The errors recsys raises for things a user can act on (bad input, a changed file, a diverged run):
the command line prints their message, without a traceback, and exits with status 2.

This module imports nothing; every other module may import it."""


class RecsysError(Exception):
    """Base of the errors whose message is the whole story (it names the file, line, key or run)."""


class DataError(RecsysError, ValueError):
    """Bad input data; the message names the file, line and field."""
