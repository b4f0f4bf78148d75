"""Load sweep outputs into pandas frames: one row per run (``load_runs``) or per epoch (``load_history``).

Settings always come from each run's ``.hydra/config.yaml`` (never from folder names), flattened with dots
(``dp.clip``, ``attack.poison_ratio``); metrics come from ``metrics.json`` as they are, so new keys appear as new
columns without changes here. A run without a readable metrics.json has status ``missing``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

PathLike = str | Path
GROUPS = ("dataset", "model", "attack", "optimizer", "dp")
# Top-level config scalars other than seed become ``config.<key>``: metrics.json has keys such as ``device``
# (the device actually used) that would otherwise clash, and a dot marks every other column as a setting.
PLAIN_TOP_LEVEL = frozenset({"seed"})
# Config values that label a run but do not change its outcome: never a reason to split or average.
NOT_SETTINGS = frozenset({"seed", "config.cache_dir", "config.device", "dataset.data_dir", "dataset.download"})
STATUSES = ("ok", "diverged", "failed", "missing")


def is_config_column(name: str) -> bool:
    """Whether a column came from ``.hydra/config.yaml``: dotted names, and ``seed``."""
    return "." in str(name) or name in PLAIN_TOP_LEVEL


def _natural_key(path: Path) -> list:
    # Job dirs are numbered: 2 sorts before 10.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_run_dirs(path_or_paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """Every directory holding ``.hydra/config.yaml`` under the given sweep or run dirs (sorted, no duplicates)."""
    roots = [path_or_paths] if isinstance(path_or_paths, str | Path) else list(path_or_paths)
    found: set[Path] = set()
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"not a directory: {root}")
        found.update(p.parent.parent.resolve() for p in root.glob("**/.hydra/config.yaml"))
    return sorted(found, key=_natural_key)


def _plain(value: Any) -> Any:
    # Lists become tuples so settings such as dataset.classes can be groupby keys.
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_config(run_dir: PathLike) -> dict[str, Any]:
    """A run's resolved config as a flat ``{dotted.key: value}`` dict (the ``hydra`` node skipped)."""
    cfg = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)
    out: dict[str, Any] = {}
    for key, value in _flatten(raw).items():
        # oc.env would read the *analysing* machine's environment, not the run's: keep such expressions as text.
        if isinstance(value, str) and "${" in value and "oc.env" not in value:
            # An unresolvable interpolation is still worth showing, as text.
            with contextlib.suppress(Exception):
                value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
        out[key if "." in key or key in PLAIN_TOP_LEVEL else f"config.{key}"] = _plain(value)
    return out


def read_metrics(run_dir: PathLike) -> dict[str, Any]:
    """A run's metrics.json; status ``missing`` (with the reason in ``error``) when absent or unreadable."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {"status": "missing", "error": "no metrics.json: the job never finished"}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return {"status": "missing", "error": f"unreadable metrics.json: {err}"}
    if not isinstance(data, dict) or "status" not in data:
        return {"status": "missing", "error": "metrics.json has no status"}
    return {k: _plain(v) for k, v in data.items()}


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
    metrics.json key, ``run_dir``, ``status`` (``missing`` without a readable metrics.json) and ``defense``.
    """
    records = []
    for run_dir in find_run_dirs(path_or_paths):
        record = read_config(run_dir)
        record.update(read_metrics(run_dir))
        record["run_dir"] = str(run_dir)
        records.append(record)
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
    """One row per epoch of every run with a history.csv, plus its config, ``status``, ``defense``, ``run_dir``."""
    frames = []
    for run_dir in find_run_dirs(path_or_paths):
        path = run_dir / "history.csv"
        if not path.exists() or path.stat().st_size == 0:
            continue
        try:
            hist = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        meta = read_config(run_dir) | {"status": read_metrics(run_dir)["status"], "run_dir": str(run_dir)}
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


def summarise(
    df: pd.DataFrame, by: Sequence[str], *, metrics: Sequence[str] | None = None, wide: bool = False
) -> pd.DataFrame:
    """Mean, sd and count of each metric per group of ``by`` (over seeds and every column not in ``by``).

    Tidy (long) by default: columns ``*by, metric, mean, std, count``; ``wide=True`` gives one row per group
    with ``<metric>_mean``, ``<metric>_std``, ``<metric>_count`` columns. Null group keys (e.g. ``dp.clip`` of
    vanilla runs) form their own group; ``count`` counts non-null values.
    """
    by = list(by)
    if not by:
        raise ValueError("summarise: `by` needs at least one column (e.g. ['attack.name', 'defense'])")
    missing = [c for c in [*by, *(metrics or [])] if c not in df.columns]
    if missing:
        raise KeyError(f"summarise: no column(s) {missing}; available: {sorted(map(str, df.columns))}")
    metrics = list(metrics) if metrics is not None else metric_columns(df, exclude=by)
    values = df[metrics].apply(pd.to_numeric, errors="coerce")
    grouped = pd.concat([df[by], values], axis=1).groupby(by, dropna=False, sort=True)[metrics]
    stats = grouped.agg(["mean", "std", "count"])
    if wide:
        stats.columns = [f"{m}_{s}" for m, s in stats.columns]
        return stats.reset_index()
    long = stats.stack(level=0, future_stack=True).rename_axis([*by, "metric"]).reset_index()
    long["count"] = long["count"].astype(int)
    return long[[*by, "metric", "mean", "std", "count"]]
