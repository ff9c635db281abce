"""``python -m trainproof ...`` is the ``trainproof`` command."""

from trainproof.cli import app

app()
