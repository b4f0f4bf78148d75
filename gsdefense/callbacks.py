"""Hydra callbacks for sweeps."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def sweep_status(sweep_dir: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Runs of a sweep grouped by status: ``{status: [(run_dir, error), …]}``.

    A job dir without metrics.json never finished and counts as ``missing``.
    """
    groups: dict[str, list[tuple[str, str]]] = {}
    for hydra_dir in sorted(Path(sweep_dir).glob("**/.hydra")):
        run_dir = hydra_dir.parent
        path = run_dir / "metrics.json"
        status, error = "missing", "no metrics.json: the job never finished"
        if path.exists():
            data = json.loads(path.read_text())
            status, error = data.get("status", "missing"), data.get("error") or ""
        groups.setdefault(status, []).append((str(run_dir), error))
    return groups


class SweepSummary(Callback):
    """At the end of a multirun: one line per failed run, and exit 1 if any failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        groups = sweep_status(config.hydra.sweep.dir)
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(groups.items()))
        print(f"sweep {config.hydra.sweep.dir}: {counts or 'no runs'}", file=sys.stderr)
        bad = groups.get("failed", []) + groups.get("missing", [])
        for run_dir, error in bad:
            print(f"  FAILED {run_dir}: {error}", file=sys.stderr)
        if bad:
            sys.exit(1)
