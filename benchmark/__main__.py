"""`python -m cleanbench ...` is the same as `cleanbench ...`."""

import sys

from cleanbench.cli import main

sys.exit(main())
