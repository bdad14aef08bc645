"""tuneforge: fine-tune language models from one config file."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# A run's console shows tuneforge's own lines. Libraries' notices that need no action from the user (on a
# bf16-capable CPU bitsandbytes warns at import that an optional kernel package is missing) are hidden unless
# TUNEFORGE_LIBRARY_LOGS=1.
if os.environ.get("TUNEFORGE_LIBRARY_LOGS") != "1":
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

if TYPE_CHECKING:
    from tuneforge.api import load_adapter_set, train
    from tuneforge.runs.run import RunResult

__all__ = ["RunResult", "__version__", "load_adapter_set", "train"]


def __getattr__(name: str):
    # Lazy, so `import tuneforge` and `tuneforge --help` stay fast (no torch import).
    if name == "train":
        from tuneforge.api import train

        return train
    if name == "load_adapter_set":
        from tuneforge.api import load_adapter_set

        return load_adapter_set
    if name == "RunResult":
        from tuneforge.runs.run import RunResult

        return RunResult
    raise AttributeError(name)
