"""``python -m trio_fwagent`` runs the command-line interface."""

from trio_fwagent.cli import main

main()
