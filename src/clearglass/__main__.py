"""`python -m clearglass` runs the command line."""

import sys

from clearglass.cli import main

sys.exit(main())
