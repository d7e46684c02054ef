"""``python -m f3stream``: the same as the ``f3stream`` command."""

from .cli import main

raise SystemExit(main())
