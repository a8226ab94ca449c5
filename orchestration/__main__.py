"""``python -m orchestration`` is the ``arena`` command."""

from orchestration.cli import main

main()
