"""Shared by the benchmark scripts: JSON reports, PNG figures, padded batches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def write_json(path: str, report: dict) -> None:
    """Writes ``report`` as indented JSON to ``path`` (creating its folder)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {path}")


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a note) without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG written")
        return None
    return plt


def save_figure(fig, path: Path) -> None:
    """Writes ``fig`` as a PNG at ``path`` (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def padded_batches(arrays: dict, batch: int):
    """(padded chunk, its true size) over the leading axis; one shape for all.

    The last chunk repeats its last row up to ``batch`` (when there is more than one
    chunk), so a jitted scorer compiles once.
    """
    total = len(next(iter(arrays.values())))
    for start in range(0, total, batch):
        n = min(batch, total - start)
        part = {}
        for key, x in arrays.items():
            chunk = x[start:start + n]
            if n < batch and total > batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, 0)])
            part[key] = chunk
        yield part, n
