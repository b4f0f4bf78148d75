"""Hydra callbacks for sweeps."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gsdefense.analysis import find_run_dirs, read_run
from gsdefense.errors import one_line

# A diverged run is a recorded, legitimate outcome (non-finite loss): listed, but the sweep still succeeds.
ACCEPTED = frozenset({"ok", "diverged"})


def sweep_status(sweep_dir: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Runs of a sweep grouped by status: ``{status: [(run_dir, error), …]}``, as ``load_runs`` sees them.

    A job dir without metrics.json never finished (``missing``); a metrics.json of another config is ``stale``;
    anything that cannot be read is ``invalid``, and a run that cannot even be listed counts as ``failed``.
    """
    groups: dict[str, list[tuple[str, str]]] = {}
    try:
        run_dirs = find_run_dirs(sweep_dir)
    except OSError:
        return groups
    for run_dir in run_dirs:
        try:
            row = read_run(run_dir)
            status, error = str(row["status"]), str(row.get("error") or "")
        except Exception as err:  # noqa: BLE001 - the summary must never crash the end of a sweep
            status, error = "failed", f"cannot read the run: {type(err).__name__}: {err}"
        groups.setdefault(status, []).append((str(run_dir), " ".join(error.split())))
    return groups


class SweepSummary(Callback):
    """At the end of a multirun: one line per run that is not ok, and exit 1 if any failed, went missing, is stale
    or invalid (diverged runs are listed but keep exit 0)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from gsdefense.runlock import release_all

        release_all()  # a launcher that trained jobs in this process (fused) leaves their folders to others now
        sweep_dir = config.hydra.sweep.dir
        try:
            groups = sweep_status(sweep_dir)
        except Exception as err:  # noqa: BLE001 - Hydra would turn an error here into a warning and exit 0
            print(f"sweep {sweep_dir}: cannot summarise the runs ({one_line(err)})", file=sys.stderr)
            sys.exit(1)
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(groups.items()))
        print(f"sweep {sweep_dir}: {counts or 'no runs'}", file=sys.stderr)
        for status in sorted(groups):
            if status == "ok":
                continue
            tag = "diverged" if status == "diverged" else status.upper()
            for run_dir, error in groups[status]:
                print(f"  {tag} {run_dir}: {error}", file=sys.stderr)
        if not groups or set(groups) - ACCEPTED:
            sys.exit(1)
