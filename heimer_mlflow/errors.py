"""Errors a user can cause and fix. The CLI prints them as one line, without a traceback."""


class HeimerError(Exception):
    """A problem with the user's input (path, label, shape, model URI, layer ...).

    The message must name the offending subject or value and say how to fix it.
    """


def one_line(error: BaseException, limit: int = 5000) -> str:
    """A failure as one line: a HeimerError's own message, else ``Type: first line``."""
    text = (str(error).strip().splitlines() or [""])[0]
    if not isinstance(error, HeimerError):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
