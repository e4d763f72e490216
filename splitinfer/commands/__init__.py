"""CLI commands beyond the core pipeline, one module per area. Each module decorates functions with
`@app.command()` from `splitinfer.cli`; importing this package registers them all. Modules import
their packages lazily inside the commands, like cli.py, so device commands work without torch."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
