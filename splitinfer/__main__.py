"""`python -m splitinfer ...` = `splitinfer ...`."""

from splitinfer.app import app

app()
