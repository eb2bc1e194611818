"""``python -m hil`` = ``bess-hil``."""

from .cli import main

raise SystemExit(main())
