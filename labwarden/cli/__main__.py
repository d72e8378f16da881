"""`python -m labwarden.cli`: the `labwarden` command."""

import sys

from labwarden.cli import main

sys.exit(main())
