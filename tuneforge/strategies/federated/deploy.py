"""A federation deployed on real machines: the ServerApp a SuperLink runs and the config every app reads
(`strategies/flower_app` is the Flower App directory `flwr run` is given)."""

from __future__ import annotations

import logging

from tuneforge.config import LoadedConfig
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.strategies.base import validate_strategy_params
from tuneforge.strategies.federated import run
from tuneforge.strategies.federated.client import _PROCESS
from tuneforge.strategies.params import FederatedParams


class _PlainUserErrors(logging.Filter):
    """Flower logs what an app raises with its traceback: a tuneforge user error is said as its message alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, TuneforgeError):
            record.msg, record.args, record.exc_info, record.exc_text = f"error: {error}", (), None, None
        return True


_PLAIN_USER_ERRORS = _PlainUserErrors()


def deployed_config(context) -> tuple[LoadedConfig, FederatedParams]:
    """A deployed app's tuneforge config: the YAML the run names (`flwr run ... --run-config 'config="..."'`)."""
    from tuneforge.config import load_config

    logging.getLogger("flwr").addFilter(_PLAIN_USER_ERRORS)  # the ServerApp's and each ClientApp's
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
    connected SuperNodes; `--run-config 'config="..." resume=true'`. A user error ends the run failed, logged as
    its message (`_PlainUserErrors`)."""
    loaded, params = deployed_config(context)
    run(loaded, params, resume=bool(context.run_config.get("resume", False)), quiet=False, grid=grid)
