"""`python -m tuneforge.strategies.flower_app`: the directory of the Flower App to give `flwr run`."""

from pathlib import Path

print(Path(__file__).parent)
