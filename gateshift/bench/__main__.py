"""``python -m gateshift.bench``: the same as the ``gateshift-bench`` command."""

import sys

from gateshift.bench.cli import main

sys.exit(main())
