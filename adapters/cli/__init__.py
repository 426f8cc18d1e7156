"""The ``pipestate`` command line (``adapters.cli.main:main``)."""
