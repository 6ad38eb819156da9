"""``python -m feval_core.cli`` (and ``accelerate launch -m feval_core.cli``): the ``feval`` command."""

import sys

from .main import main

sys.exit(main())
