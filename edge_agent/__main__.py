"""``python -m edge_agent`` = ``bess-edge``."""

from .cli import main

raise SystemExit(main())
