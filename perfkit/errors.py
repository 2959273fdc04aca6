"""Errors that mean "the user asked for something that cannot be done".

The CLI turns a `UsageError` into one line on stderr and exit code 2, with no traceback. Anything else
that escapes is a bug and keeps its traceback.
"""


class UsageError(ValueError):
    """Bad input: the message names what is wrong and what was expected."""


_SHOWN_MAX = 60  # characters of a value a message may show


def shown(value, limit: int = _SHOWN_MAX) -> str:
    """A value as an error message may show it: repr, bounded in size and cost, on one line.

    Input is shown back to its author, who may be careless or hostile: a YAML alias bomb (a list of lists
    of ... nine levels deep), a megabyte string, an integer of thousands of digits. reprlib visits a few
    items per level and two levels at most, so this costs microseconds whatever `value` is.
    """
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxlong, r.maxother = 2, limit, limit, limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 4
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - an int past Python's digit limit, a repr that raises
        text = f"<a {type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(word, allowed) -> str:
    """` (did you mean 'x'?)` naming the allowed word closest to a misspelt `word` (difflib's, at its 0.6
    cutoff), or "" where none is close or `word` is not a string. Only its first 100 characters are
    compared: difflib's cost grows with the square of a word's length, and no longer word is close to a key."""
    import difflib

    close = difflib.get_close_matches(word[:100], allowed, n=1) if isinstance(word, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_line(exc: BaseException, limit: int = 2000, with_type: bool = False) -> str:
    """An exception's message on one line (white space folded), at most `limit` characters; its type name
    in front with `with_type`, or alone where the message is empty."""
    text = " ".join(str(exc).split())
    if with_type or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:limit]
