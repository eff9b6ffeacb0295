"""Shared by the benchmark scripts: writing their JSON report."""

from __future__ import annotations

import json
import os


def write_json(path: str, report: dict) -> None:
    """Writes ``report`` as indented JSON to ``path`` (creating its folder)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {path}")
