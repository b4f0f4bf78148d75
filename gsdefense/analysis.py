"""Load sweep outputs into pandas frames: one row per run (``load_runs``) or per epoch (``load_history``).

Settings always come from each run's ``.hydra/config.yaml`` (never from folder names), flattened with dots
(``dp.clip``, ``attack.poison_ratio``); metrics come from ``metrics.json`` as they are, so new keys appear as new
columns without changes here. Each metrics.json is checked against the config beside it (``run_id``) and for its
types (``gsdefense.records``): what fails a check gets its own status and a reason in ``error``, never another
config's numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from gsdefense.records import (
    GROUPS,
    NOT_SETTINGS,
    PLAIN_TOP_LEVEL,
    RUN_STATUSES,
    STATS,
    STATUSES,
    PathLike,
    config_run_id,
    find_run_dirs,
    flat_config,
    is_config_column,
    load_config,
    read_config,
    read_metrics,
    read_run,
    resolve_sweep,
)

log = logging.getLogger(__name__)

__all__ = [
    "NOT_SETTINGS",
    "PLAIN_TOP_LEVEL",
    "RUN_STATUSES",
    "STATUSES",
    "add_defense",
    "config_columns",
    "config_run_id",
    "defense_label",
    "find_run_dirs",
    "flat_config",
    "is_config_column",
    "load_config",
    "load_history",
    "load_runs",
    "metric_columns",
    "read_config",
    "read_metrics",
    "read_run",
    "resolve_sweep",
    "setting_columns",
    "summarise",
]


def defense_label(row: pd.Series | dict) -> str:
    """``vanilla`` for dp.name none, else e.g. ``DP clip=1 noise=0.4``."""
    name = row.get("dp.name")
    if name is None or name == "none" or (isinstance(name, float) and math.isnan(name)):
        return "vanilla"
    prefix = "DP" if name == "dpsgd" else str(name)
    parts = [f"{k}={row.get(f'dp.{k}'):g}" for k in ("clip", "noise") if _is_number(row.get(f"dp.{k}"))]
    return " ".join([prefix, *parts])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def add_defense(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with a ``defense`` column (see ``defense_label``)."""
    out = df.copy()
    out["defense"] = [defense_label(row) for row in df.to_dict("records")] if len(df) else pd.Series(dtype=str)
    return out


def config_columns(df: pd.DataFrame) -> list[str]:
    """Columns that came from ``.hydra/config.yaml`` (dotted names, and ``seed``)."""
    return [c for c in df.columns if is_config_column(c)]


def setting_columns(df: pd.DataFrame, *, varying: bool = False) -> list[str]:
    """Config columns that define an experiment (seed and paths excluded); only those that vary if ``varying``."""
    cols = [c for c in config_columns(df) if c not in NOT_SETTINGS]
    if varying:
        cols = [c for c in cols if df[c].nunique(dropna=False) > 1]
    return cols


def _frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records)
    # All-null metric columns arrive as object; numbers must stay numeric for describe/plots.
    for col in df.columns:
        if df[col].dtype == object and df[col].map(lambda v: v is None or _is_number(v)).all():
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def load_runs(path_or_paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """One row per run found under the given sweep or run dirs.

    Columns: the config (``dp.clip`` …; top-level keys other than ``seed`` as ``config.<key>``), every
    metrics.json key, ``run_dir``, ``status`` (see ``STATUSES`` and ``read_run``) and ``defense``.
    """
    records = [read_run(run_dir) for run_dir in find_run_dirs(path_or_paths)]
    if not records:
        return pd.DataFrame(columns=["run_dir", "status", "defense"])
    df = _frame(records)
    return add_defense(df[_ordered(df.columns)])


def _ordered(columns: Iterable[str]) -> list[str]:
    # Mixed sweeps add keys in any order; keep config groups together, then metrics, then run_dir.
    columns = list(columns)
    config = [c for c in columns if is_config_column(c)]
    rank = {g: i for i, g in enumerate(GROUPS)}
    config.sort(key=lambda c: (rank.get(c.split(".")[0], len(GROUPS)), columns.index(c)))
    rest = [c for c in columns if c not in config and c != "run_dir"]
    return config + rest + ["run_dir"]


def load_history(path_or_paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """One row per epoch of every run with a history.csv, plus its config, ``status``, ``defense``, ``run_dir``.

    The status is the run's (``read_run``): figures keep ok and diverged runs, so a stale run's epochs never show.
    """
    frames = []
    for run_dir in find_run_dirs(path_or_paths):
        path = run_dir / "history.csv"
        if not path.exists() or path.stat().st_size == 0:
            continue
        try:
            hist = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            log.warning("skipping the per-epoch history of %s: unreadable history.csv (%s)", run_dir, err)
            continue
        row = read_run(run_dir)
        meta = {k: v for k, v in row.items() if is_config_column(k)}
        meta |= {"status": row["status"], "run_dir": str(run_dir)}
        for key, value in meta.items():
            if key not in hist:
                hist[key] = [value] * len(hist)
        frames.append(hist)
    if not frames:
        return pd.DataFrame(columns=["epoch", "run_dir", "status", "defense"])
    return add_defense(pd.concat(frames, ignore_index=True))


def metric_columns(df: pd.DataFrame, *, exclude: Sequence[str] = ()) -> list[str]:
    """Numeric columns that are outcomes, not settings (config columns and ``epoch`` excluded)."""
    skip = set(config_columns(df)) | set(exclude) | {"epoch"}
    return [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]


def _varying_within(df: pd.DataFrame, by: list[str]) -> list[str]:
    """Per group of ``by`` (in groupby order): the config columns, seed first, that vary inside it."""
    inside = [c for c in ["seed", *setting_columns(df)] if c in df.columns and c not in by]
    groups = df.groupby(by, dropna=False, sort=True) if by else [(0, df)]
    return [", ".join(c for c in inside if part[c].nunique(dropna=False) > 1) for _, part in groups]


def summarise(
    df: pd.DataFrame, by: Sequence[str] | None = None, *, metrics: Sequence[str] | None = None, wide: bool = False
) -> pd.DataFrame:
    """Mean, sd and n of each metric per setting: per group of ``by``, by default every setting that varies in
    ``df`` (``setting_columns(df, varying=True)``), so that each group is one setting and its spread is over seeds.

    Tidy (long) by default: columns ``*by, metric, mean, std, count, over``; ``wide=True`` gives one row per group
    with ``<metric>_mean``, ``<metric>_std``, ``<metric>_count`` and ``over``. ``over`` names the config columns
    that vary inside the group (``seed`` when ``by`` is every swept setting): what the sd is over. Null group keys
    (e.g. ``dp.clip`` of vanilla runs) form their own group; ``count`` counts non-null values. Pass ok runs
    (``runs[runs.status == "ok"]``): other statuses have no numbers.
    """
    by = setting_columns(df, varying=True) if by is None else list(by)
    missing = [c for c in [*by, *(metrics or [])] if c not in df.columns]
    if missing:
        raise KeyError(f"summarise: no column(s) {missing}; available: {sorted(map(str, df.columns))}")
    metrics = list(metrics) if metrics is not None else metric_columns(df, exclude=by)
    if df.empty:
        stats = [f"{m}_{s}" for m in metrics for s in ("mean", "std", "count")] if wide else ["metric", *STATS]
        return pd.DataFrame(columns=[*by, *stats, "over"])
    values = df[metrics].apply(pd.to_numeric, errors="coerce")
    keys = by or ["_all"]
    frame = pd.concat([df[by], values], axis=1).assign(_all=0)
    stats = frame.groupby(keys, dropna=False, sort=True)[metrics].agg(["mean", "std", "count"])
    over = _varying_within(df, by)
    if wide:
        stats.columns = [f"{m}_{s}" for m, s in stats.columns]
        out = stats.reset_index().assign(over=over)
    else:
        out = stats.stack(level=0, future_stack=True).rename_axis([*keys, "metric"]).reset_index()
        out["count"] = out["count"].astype(int)
        out["over"] = np.repeat(over, len(metrics))
        out = out[[*keys, "metric", "mean", "std", "count", "over"]]
    return out.drop(columns=["_all"], errors="ignore")
