"""`python -m labwarden.cli`: the labwarden command (tests run it so)."""

import sys

from labwarden.cli import main

sys.exit(main())
