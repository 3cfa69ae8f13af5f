"""``python -m itonami`` runs the command line (same as ``itonami``)."""

import sys

from .cli import main

sys.exit(main())
