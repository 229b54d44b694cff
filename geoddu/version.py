"""geoddu's version, in a module of its own: the modules that record it (checkpoints, data
records, exports) import it without importing the package's front (`geoddu.segment`, ...)."""

__version__ = "0.1.0"
