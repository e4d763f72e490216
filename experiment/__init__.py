"""Experiments on one machine: a grid of models × policies × codecs × network conditions, each cell
run with the real edge client against the real server through an emulated link, every request
recorded, then plotted.

- `experiment.config`: the TOML config as frozen dataclasses (`load_config`); `experiment.conditions`
  its network conditions; `experiment.toml_values` the typed readers of its values.
- `experiment.device`: the emulated device (a slower CPU, its thread count, pinning).
- `experiment.grid`: the cells of the grid; `experiment.prepare`: models profiled, plans and bundles;
  `experiment.measure`: one cell's requests, recorded; `experiment.provenance`: what the run was.
- `experiment.runner`: `run_experiment(config)` → results.csv, meta.json, config.toml.
- `experiment.results`: the per-request record and its CSV form.
- `experiment.summary` and `experiment.plots`: tables and figures from results.csv + meta.json
  alone, so an experiment is re-plotted without re-running it.
"""
