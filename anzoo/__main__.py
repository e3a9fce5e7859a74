"""``python -m anzoo``: the same as the ``anzoo`` command."""
from .cli import main

main()
