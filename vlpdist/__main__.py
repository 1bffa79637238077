"""`python -m vlpdist` (also what `deepspeed -m vlpdist ...` runs)."""

import sys

from vlpdist.cli import main

sys.exit(main())
