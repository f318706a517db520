"""`python -m sparring.cli`: the `sparring` command."""

import sys

from sparring.cli.main import main

sys.exit(main())
