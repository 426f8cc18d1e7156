"""The ``pipestate`` command line (``pipestate.adapters.cli.main:main``)."""
