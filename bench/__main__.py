"""`python -m bench` is the same as `vtbench`."""

import sys

from bench.cli import main

sys.exit(main())
