"""Errors that mean "the user asked for something that cannot be done".

The CLI turns a `UsageError` into one line on stderr and exit code 2, and a `WriteError` (a full disk)
into one line and exit code 1, with no traceback. Anything else that escapes is a bug and keeps its
traceback. `read_regular` is how perfkit reads a file it did not just write itself: as a regular file of
bounded size, never waiting on a FIFO nor reading a device.
"""

import contextlib
import errno
import os
import stat


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


def printable(text) -> str:
    """`text` as a terminal may be given it: each character that str.isprintable refuses (control characters
    such as ESC, CR, BEL, backspace and line breaks, Unicode format characters such as the bidi overrides
    U+202A-U+202E and U+2066-U+2069, the surrogate escapes of bytes that were not UTF-8) written as the
    escape repr writes for it (\\x1b, \\r, \\u202e, \\udcff); the rest as it is. For every value from outside
    (labels, names, paths, host names, messages) that a command prints: it cannot move the cursor, recolour
    or clear the screen, reorder what follows, or fail to encode."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


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


@contextlib.contextmanager
def nesting_refused(what: str):
    """Inside: a RecursionError raised by a parser (json's, nbformat's, transformers' of a config.json)
    recursing through data nested thousands of levels deep, as `[[[[...]]]]` in a damaged or hostile file
    is, becomes ValueError "nested too deeply, expected `what`", which every reader names in one line like
    any other damage."""
    try:
        yield
    except RecursionError:
        raise ValueError(f"nested too deeply, expected {what}") from None


class WriteError(OSError):
    """A file that could not be written (a full disk, the file size limit, an I/O error): str() is one line
    naming the file, the reason and what would let the write succeed. An OSError, so that whoever carries on
    without a write (a cache) still catches it as one."""

    def __init__(self, path: str, exc: OSError):
        super().__init__(exc.errno, exc.strerror)
        self.path = path
        self.reason = exc.strerror or one_line(exc, 200)

    def __str__(self) -> str:
        if self.errno == errno.EFBIG:
            expected = "a file size limit (ulimit -f) that lets the file be written"
        elif self.errno in (errno.ENOSPC, errno.EDQUOT):
            expected = "free space on its file system"
        else:
            expected = "a file system that takes the write"
        return f"cannot write {self.path} ({self.reason}): expected {expected}"


# errno values that say a file system is out of room for a write: the file size limit (EFBIG, with
# SIGXFSZ ignored), no space left, the quota exceeded
NO_ROOM = (errno.EFBIG, errno.ENOSPC, errno.EDQUOT)


class UnreadableFile(ValueError):
    """A file read_regular (or open_regular) refused; str() is the reason on one line, starting with what the
    file is ("is not a regular file (a FIFO), expected ...")."""


_KINDS = (("S_ISDIR", "a directory"), ("S_ISFIFO", "a FIFO"), ("S_ISCHR", "a character device"),
          ("S_ISBLK", "a block device"), ("S_ISSOCK", "a socket"))


def _size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 2 << 20 and n % (1 << 20) == 0 else f"{n // 1024} KiB"


def open_regular(path, what: str, max_bytes: int | None = None) -> int:
    """A descriptor of `path` open for reading, where it is a regular file of at most `max_bytes` (None: any
    size); the caller closes it. Links are followed and the file is judged once open (fstat), so a link to
    /dev/zero is a character device; the open never waits (O_NONBLOCK: a FIFO without a writer would block
    it for ever). Raises UnreadableFile: "no such file", "is not a regular file (a FIFO)", "is larger than
    ...", "cannot be read (reason)", each followed by ", expected `what`"."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnreadableFile(f"no such file, expected {what}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc, 200)
        raise UnreadableFile(f"cannot be read ({reason}), expected {what}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KINDS if getattr(stat, test)(st.st_mode)), "not a file")
            raise UnreadableFile(f"is not a regular file ({kind}), expected {what}")
        if max_bytes is not None and st.st_size > max_bytes:
            raise UnreadableFile(f"is larger than {_size_text(max_bytes)}, expected {what}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path, what: str, max_bytes: int) -> bytes:
    """The bytes of `path`, a regular file of at most `max_bytes` (open_regular's checks); the read stops at
    `max_bytes` + 1 whatever the file claims its size is (a /proc file says 0). For every file perfkit reads
    that someone else may have put there: run and probe records, point files, params and comparisons files,
    notebooks. Raises UnreadableFile."""
    fd = open_regular(path, what, max_bytes)
    chunks, size = [], 0
    try:
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:  # EISDIR cannot happen (fstat said regular); EIO can
        raise UnreadableFile(f"cannot be read ({exc.strerror or one_line(exc, 200)}), expected {what}") from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise UnreadableFile(f"is larger than {_size_text(max_bytes)}, expected {what}")
    return b"".join(chunks)
