"""``python -m adapters.cli``: the same as the ``pipestate`` console script."""

from __future__ import annotations

import sys

from pipestate.adapters.cli.main import main

sys.exit(main())
