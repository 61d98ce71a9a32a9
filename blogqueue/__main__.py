"""`python -m blogqueue ...`: the same command as `blogqueue ...`."""

import sys

from .cli import main

sys.exit(main())
