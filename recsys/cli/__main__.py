"""``python -m recsys.cli``: the same command line as ``recsys``."""

import sys

from . import main

sys.exit(main())
