"""A reference HTTP front for orchestrator_core: see ``app.py`` and README.md."""
