"""``python -m lm <command> ...`` is ``lm <command> ...``."""

import sys

from lm.cli import main

sys.exit(main())
