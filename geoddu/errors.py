"""Errors that the fronts (CLI, QGIS) show to users as one line, without a traceback."""


class GeodduError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class Cancelled(GeodduError):
    """The caller's cancellation check asked the run to stop; nothing was written."""
