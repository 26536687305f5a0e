"""`python -m lipsync.training.data.synthetic ...`: the same as `lipsync-train corpus ...`."""

import sys

from .cli import main

sys.exit(main())
