"""Errors a user can cause and fix. The CLI prints them as one line, without a traceback."""


class HeimerError(Exception):
    """A problem with the user's input (path, label, shape, model URI, layer ...).

    The message must name the offending subject or value and say how to fix it.
    """
