"""`python -m splitinfer ...` = `splitinfer ...`."""

from splitinfer.cli import app

app()
