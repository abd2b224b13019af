"""``python -m fm_local`` is ``fm``."""

from fm_local.cli import main

main()
