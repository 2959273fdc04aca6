"""Errors that mean "the user asked for something that cannot be done".

The CLI turns a `UsageError` into one line on stderr and exit code 2, with no traceback. Anything else
that escapes is a bug and keeps its traceback.
"""


class UsageError(ValueError):
    """Bad input: the message names what is wrong and what was expected."""
