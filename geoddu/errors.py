"""Errors that the fronts (CLI, QGIS) show to users as one line, without a traceback."""


class GeodduError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class Cancelled(GeodduError):
    """The caller's cancellation check asked the run to stop; nothing was written."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-line user errors."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else exc.__class__.__name__


class GeodduWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one
    'Warning: ...' line), e.g. a scene unlike the data the model was trained on."""
