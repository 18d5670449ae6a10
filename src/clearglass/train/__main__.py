"""``python -m clearglass.train ...`` (torchrun-friendly) runs ``clearglass train ...``: one code path, one output."""

import sys

from clearglass.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
