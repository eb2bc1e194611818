"""`python -m control_plane` = `bess-plane`."""

import sys

from .cli import main

sys.exit(main())
