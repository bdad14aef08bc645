"""A federation deployed on real machines: the ServerApp a SuperLink runs and the config every app reads
(`strategies/flower_app` is the Flower App directory `flwr run` is given)."""

from __future__ import annotations

from tuneforge.config import LoadedConfig
from tuneforge.errors import ConfigError
from tuneforge.strategies.base import validate_strategy_params
from tuneforge.strategies.federated import run
from tuneforge.strategies.federated.client import _PROCESS
from tuneforge.strategies.params import FederatedParams


def deployed_config(context) -> tuple[LoadedConfig, FederatedParams]:
    """A deployed app's tuneforge config: the YAML the run names (`flwr run ... --run-config 'config="..."'`)."""
    from tuneforge.config import load_config

    path = str(context.run_config.get("config") or "")
    if path not in _PROCESS:
        if not path:
            raise ConfigError("flwr run: no tuneforge config\n  fix: flwr run APP local --run-config "
                              "'config=\"/path/to/config.yaml\"'")
        loaded = load_config(path)
        _PROCESS[path] = (loaded, validate_strategy_params(loaded.run.strategy, loaded.where("strategy")))
    return _PROCESS[path]


def serve_deployed(grid, context) -> None:
    """The ServerApp a SuperLink runs (`flwr run`): the run as `tuneforge train` would do it, on the grid of the
    connected SuperNodes; `--run-config 'config="..." resume=true'`."""
    loaded, params = deployed_config(context)
    run(loaded, params, resume=bool(context.run_config.get("resume", False)), quiet=False, grid=grid)
