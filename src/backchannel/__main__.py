"""``python -m backchannel`` runs the command line."""

from .cli import main

main()
