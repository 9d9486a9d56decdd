"""``torchrun ... tests/ddp_entry.py run toy ...``: the CLI with the test-only toy registered."""

import sys

import toy  # noqa: F401
from hypersparse.cli import main

sys.exit(main())
