"""The commands, one module per group; each holds a `commands` Typer that splitinfer.app adds to the
command line. Modules import their packages lazily inside the commands, so device commands work
without torch."""
