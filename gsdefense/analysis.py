"""Load sweep outputs into pandas frames: one row per run (``load_runs``) or per epoch (``load_history``).

Settings always come from each run's ``.hydra/config.yaml`` (never from folder names), flattened with dots
(``dp.clip``, ``attack.poison_ratio``); metrics come from ``metrics.json`` as they are, so new keys appear as new
columns without changes here. Each metrics.json is checked against the config beside it (``run_id``) and for its
types; what fails a check gets its own status and a reason in ``error``, never another config's numbers:

- ``missing``: no metrics.json (the job never finished);
- ``stale``: metrics.json is another config's (its ``run_id`` differs from this config's);
- ``invalid``: the config or metrics.json cannot be read, or a metric has the wrong type.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

PathLike = str | Path
STATS = ("mean", "std", "count")
GROUPS = ("dataset", "model", "attack", "optimizer", "dp")
# Top-level config scalars other than seed become ``config.<key>``: metrics.json has keys such as ``device``
# (the device actually used) that would otherwise clash, and a dot marks every other column as a setting.
PLAIN_TOP_LEVEL = frozenset({"seed"})
# Config values that label a run but do not change its outcome: never a reason to split or average.
NOT_SETTINGS = frozenset(
    {"seed", "config.cache_dir", "config.device", "dataset.data_dir", "dataset.download", "config.rad_definition"}
)
# What metrics.json may say, then what the checks here may conclude.
RUN_STATUSES = ("ok", "diverged", "failed")
STATUSES = (*RUN_STATUSES, "stale", "invalid", "missing")
# metrics.json keys that must be numbers (or null): anything else marks the run invalid.
NUMERIC_METRICS = frozenset(
    {
        *("clean_acc", "best_clean_acc", "target_class_acc", "asr", "robust_acc", "rad", "acc_ref"),
        *("rad_dp_matched", "acc_ref_dp_matched", "train_loss", "clean_train_loss", "poison_train_loss"),
        *("epsilon", "delta", "n_train", "n_poison", "poison_ratio", "n_removed", "n_poison_removed"),
        *("certified_upper_bound", "n_targets", "mean_poisons_needed", "seconds_per_target", "seconds"),
        *("diverged_epoch", "fused_group_size"),
    }
)


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


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _recorded_env(run_dir: Path) -> dict[str, str]:
    """Environment variables Hydra set for the job (``hydra.job.env_set``): the only environment a run records."""
    with contextlib.suppress(Exception):
        env = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.job.env_set
        return {str(k): str(v) for k, v in OmegaConf.to_container(env, resolve=False).items()}
    return {}


def _env_value(key: str, text: str, recorded: dict[str, str]) -> Any:
    """An ``${oc.env:NAME,default}`` value as the run saw it, or None to drop the column.

    The run's environment is not recorded (except ``hydra.job.env_set``), and the analysing machine's is not the
    run's: locations that are not settings (``NOT_SETTINGS``: cache and data folders) are dropped; any other such
    value is shown as ``$NAME (not recorded)`` rather than guessed.
    """
    match = re.fullmatch(r"\$\{oc\.env:([^,}]+)(?:,([^}]*))?\}", text.strip())
    name = match.group(1).strip() if match else text
    if match and name in recorded:
        return recorded[name]
    return None if key in NOT_SETTINGS else f"${name} (not recorded)"


def flat_config(cfg: DictConfig, *, run_dir: PathLike | None = None) -> dict[str, Any]:
    """A resolved config as a flat ``{dotted.key: value}`` dict (the ``hydra`` node skipped)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)
    recorded = _recorded_env(Path(run_dir)) if run_dir is not None else {}
    out: dict[str, Any] = {}
    for key, value in _flatten(raw).items():
        column = key if "." in key or key in PLAIN_TOP_LEVEL else f"config.{key}"
        if isinstance(value, str) and "oc.env" in value:
            value = _env_value(column, value, recorded)
            if value is None:
                continue
        elif isinstance(value, str) and "${" in value:
            # An unresolvable interpolation is still worth showing, as text.
            with contextlib.suppress(Exception):
                value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
        out[column] = _plain(value)
    return out


def load_config(run_dir: PathLike) -> DictConfig:
    """A run's ``.hydra/config.yaml``; ValueError when it is not a YAML mapping."""
    cfg = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    if not isinstance(cfg, DictConfig):
        raise ValueError("not a YAML mapping")
    return cfg


def read_config(run_dir: PathLike) -> dict[str, Any]:
    """A run's config as a flat ``{dotted.key: value}`` dict (see ``flat_config``)."""
    return flat_config(load_config(run_dir), run_dir=run_dir)


def _type_problem(data: dict) -> str | None:
    status = data.get("status")
    if status not in RUN_STATUSES:
        return f"status {status!r} is not one of {', '.join(RUN_STATUSES)}"
    for key in sorted(NUMERIC_METRICS & data.keys()):
        value = data[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{key} is {value!r} ({type(value).__name__}), not a number"
    return None


def read_metrics(run_dir: PathLike) -> dict[str, Any]:
    """A run's metrics.json as recorded; ``missing`` when absent, ``invalid`` (with the reason in ``error``) when it
    cannot be read, has no known status, or holds a metric of the wrong type."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {"status": "missing", "error": "no metrics.json: the job never finished"}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return {"status": "invalid", "error": f"unreadable metrics.json: {_one_line(err)}"}
    if not isinstance(data, dict):
        return {"status": "invalid", "error": f"metrics.json holds a {type(data).__name__}, not an object"}
    problem = _type_problem(data)
    if problem:
        return {"status": "invalid", "error": f"metrics.json: {problem}", "run_id": data.get("run_id")}
    return {k: _plain(v) for k, v in data.items()}


def config_run_id(cfg: DictConfig) -> str:
    """The id ``gsdefense.run`` gives this config (imported here: it pulls in torch)."""
    from gsdefense.run import run_id

    return run_id(cfg)


def _stamp(run_dir: Path) -> tuple:
    """What a run's row depends on: its files' sizes and modification times (None when absent)."""
    out = []
    for path in (run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "hydra.yaml", run_dir / "metrics.json"):
        try:
            stat = path.stat()
        except OSError:
            out.append(None)
        else:
            out.append((stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def read_run(run_dir: PathLike) -> dict[str, Any]:
    """One run's row (see ``_read_run``); cached while its files are unchanged: load_runs and load_history both
    need it, and identifying a config (run_id validates the typed config) takes tens of milliseconds."""
    run_dir = Path(run_dir)
    return dict(_read_run(run_dir, _stamp(run_dir)))


@functools.lru_cache(maxsize=8192)
def _read_run(run_dir: Path, stamp: tuple) -> dict[str, Any]:  # stamp: only a cache key
    """One run's row: config columns, metrics, ``status``, ``error``, ``run_dir``. Never raises.

    A metrics.json whose ``run_id`` is not this config's id is ``stale`` and its numbers are dropped. A config that
    cannot be read or identified, or a metrics.json of the wrong form, is ``invalid``; a ``failed`` run whose
    config cannot be identified (a config error: its run failed as it should) stays ``failed``.
    """
    run_dir = Path(run_dir)
    where = {"run_dir": str(run_dir)}
    try:
        cfg = load_config(run_dir)
        record = flat_config(cfg, run_dir=run_dir)
    except Exception as err:  # noqa: BLE001 - any unreadable config is reported, never raised
        return {"status": "invalid", "error": f"unreadable .hydra/config.yaml: {_one_line(err)}", **where}
    metrics = read_metrics(run_dir)
    status, recorded = metrics["status"], metrics.get("run_id")
    if status in ("missing", "invalid") or (status == "failed" and recorded is None):
        return {**record, **metrics, **where}
    try:
        ident = config_run_id(cfg)
    except Exception as err:  # noqa: BLE001 - a config run_id cannot hash is reported, never raised
        if status == "failed":  # an invalid config that failed, as it should: its own record says why
            return {**record, **metrics, **where}
        problem = f"cannot compute this config's run_id: {_one_line(err)}"
        return {**record, "status": "invalid", "error": problem, **where}
    if recorded is None:
        return {**record, "run_id": ident, "status": "invalid", "error": "metrics.json has no run_id", **where}
    if recorded != ident:
        problem = (
            f"metrics.json ({status}) belongs to another config (its run_id {recorded}, this config's {ident}); "
            "rerun this config to replace it"
        )
        return {**record, "run_id": ident, "status": "stale", "error": problem, **where}
    return {**record, **metrics, **where}


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
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
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


def resolve_sweep(path: PathLike, *, root: PathLike | None = None) -> Path:
    """A sweep or run folder as given (relative to ``root``, default the working directory).

    ``…/latest``, when no such folder exists, is the newest sweep below its parent: the folder of the most recently
    written ``multirun.yaml`` (Hydra writes one per sweep), e.g. ``multirun/latest``.
    """
    path = Path(path)
    path = path if path.is_absolute() or root is None else Path(root) / path
    if path.name != "latest" or path.exists():
        return path
    sweeps = sorted(path.parent.glob("**/multirun.yaml"), key=lambda p: p.stat().st_mtime)
    if not sweeps:
        raise FileNotFoundError(f"{path}: no sweep (multirun.yaml) under {path.parent}; run python launch.py -m …")
    return sweeps[-1].parent
