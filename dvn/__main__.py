"""``python -m dvn``: the dvn command line."""

import sys

from .cli import main

sys.exit(main())
