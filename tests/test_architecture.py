"""ARCHITECTURE.md is the project's map: the import contract's layers appear in it, in the contract's order."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_map_lists_the_contracts_layers_in_order():
    contract = next(c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
                    if c["type"] == "layers")
    text = (ROOT / "ARCHITECTURE.md").read_text()
    positions = []
    for layer in contract["layers"]:
        for package in (name.strip() for name in layer.split("|")):
            assert f"`{package}`" in text, f"ARCHITECTURE.md does not name the layer {package}"
            positions.append(text.index(f"`{package}`"))
    assert positions == sorted(positions), "ARCHITECTURE.md lists the layers out of the contract's order"
