"""`python -m genai_cli` runs the same app as the `genai` command."""

from genai_cli.cli import main

main()
