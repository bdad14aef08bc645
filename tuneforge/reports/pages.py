"""A report as three files beside the data it reads: STEM.md, STEM.html and the STEM.png chart they show."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_pages(directory: Path, stem: str, data: Any, markdown: Callable[[Any, str], str],
                html: Callable[[Any, str], str], chart: Callable[[Path, Any], Path]) -> dict[str, Path]:
    png = chart(directory / f"{stem}.png", data)
    paths = {"md": directory / f"{stem}.md", "html": directory / f"{stem}.html", "png": png}
    paths["md"].write_text(markdown(data, png.name))
    paths["html"].write_text(html(data, png.name))
    return paths
