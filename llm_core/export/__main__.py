"""`python -m llm_core.export`: see llm_core/export/__init__.py."""

from llm_core.export.cli import main

main()
