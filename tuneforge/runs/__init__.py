"""The run directory, the product: its layout (`layout`), lock and path checks, its identity, its life from
open to complete (`run.Run`, with sub-runs for a strategy's phases), and everything that reads a finished run:
loading its model, evaluating it, serving and chat, export and GGUF, merge, measure.

Importing this package imports nothing else: `reports` reads run directories through `runs.layout` alone,
which needs neither PyTorch nor the engine."""
