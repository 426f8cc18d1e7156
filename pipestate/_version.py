"""The installed distribution's version (``pipestate --version``, ``pipestate.__version__``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("pipestate")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
