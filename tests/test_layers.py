"""DESIGN.md's one-way imports, enforced with import-linter (contract in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def test_import_layers_hold():
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    result = subprocess.run([command], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_no_module_imports_itself_back():
    """No import circle anywhere in the package (issue 29: data/ had batching -> dataset -> labels -> batching), by
    grimp's graph, which counts imports inside functions too."""
    import grimp

    graph = grimp.build_graph("tuneforge")
    circles = [(module, other) for module in sorted(graph.modules)
               for other in graph.find_modules_directly_imported_by(module)
               if graph.chain_exists(importer=other, imported=module)]
    assert circles == []
