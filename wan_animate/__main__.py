"""``python -m wan_animate``: see `wan_animate.cli`."""

from .cli import main

raise SystemExit(main())
