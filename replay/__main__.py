"""``python -m replay train|replay ...``."""

from replay.cli import app

app()
