"""Errors a user can cause and fix. The CLI prints them as one line, without a traceback."""

import tempfile
from pathlib import Path


class HeimerError(Exception):
    """A problem with the user's input (path, label, shape, model URI, layer ...).

    The message must name the offending subject or value and say how to fix it.
    """


def one_line(error: BaseException | str, limit: int = 5000, *, with_type: bool = True) -> str:
    """A failure as one line, at most ``limit`` characters: a HeimerError's own message (or a
    message given as text), else ``Type: first line``, or the first line alone with
    ``with_type=False``; the type name where the message is empty, so a line never comes out
    blank or raises on an empty message."""
    text = (str(error).strip().splitlines() or [""])[0]
    if not isinstance(error, (HeimerError, str)):
        if not text:
            text = type(error).__name__
        elif with_type:
            text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def writable_folder(path, what: str):
    """``path`` as a folder this process can write (created with its parents if absent), or a
    HeimerError naming it, the operating system's reason and the fix. ``what`` names the folder
    for the message (e.g. ``"the cohort folder"``)."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".heimer-write-check-"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise HeimerError(f"{what} {str(path)!r} cannot be written ({reason}): give a folder you can write") from None
    return folder
