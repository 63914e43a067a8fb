"""Errors a user can cause and fix. The CLI prints them as one line, without a traceback."""


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
