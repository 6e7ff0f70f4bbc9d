"""`python -m orchestrator.cli`: the `consortium` command."""
from orchestrator.cli import main

main()
