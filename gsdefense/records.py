"""One run folder as one record: its config (``.hydra/config.yaml``), its metrics.json, and its status.

The noise columns are the validated ones: ``dp.noise`` the multiplier and ``dp.noise_std`` the std σ·C, whichever
of the two a config stated (a config's ``noise: null`` is the default 1.0).

Each metrics.json is checked against the config beside it (``run_id``) and for its types; what fails a check
gets its own status and a reason in ``error``, never another config's numbers:

- ``missing``: no metrics.json (the job never finished);
- ``stale``: metrics.json is another config's (its ``run_id`` differs from this config's);
- ``invalid``: the config or metrics.json cannot be read, or a metric has the wrong type.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
        *("rad_dp_matched", "acc_ref_dp_matched", "train_loss", "clean_train_loss", "poison_train_loss", "test_loss"),
        *("epsilon", "delta", "noise_multiplier", "noise_std", "n_train", "n_poison", "poison_fraction_of_train"),
        *("n_removed", "n_poison_removed", "rad_best", "rad_early_stop", "rad_dp_matched_best", "acc_ref_best"),
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
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: JSON nested too deep to parse
        return {"status": "invalid", "error": f"unreadable metrics.json: {_one_line(err)}"}
    if not isinstance(data, dict):
        return {"status": "invalid", "error": f"metrics.json holds a {type(data).__name__}, not an object"}
    problem = _type_problem(data)
    if problem:
        return {"status": "invalid", "error": f"metrics.json: {problem}", "run_id": data.get("run_id")}
    return {k: _plain(v) for k, v in data.items()}


def config_run_id(cfg: DictConfig) -> str:
    """The id ``gsdefense.run`` gives this config (imported here: it pulls in torch)."""
    return _identify(cfg)[0]


def _identify(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """(run_id, the noise columns): ``dp.noise`` as the effective multiplier σ and ``dp.noise_std`` = σ·C, whichever
    of the two the config stated (validation folds ``noise_std`` into ``noise``), so runs of either spelling, and
    runs whose YAML leaves ``noise`` null (the default 1.0), share columns."""
    from gsdefense.identity import Identity

    who = Identity.of(cfg)
    dp = who.config["dp"]
    noise = {} if dp.get("noise") is None else {"dp.noise": dp["noise"], "dp.noise_std": dp["noise"] * dp["clip"]}
    return who.run_id, noise


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
        ident, noise = _identify(cfg)
    except Exception as err:  # noqa: BLE001 - a config run_id cannot hash is reported, never raised
        if status == "failed":  # an invalid config that failed, as it should: its own record says why
            return {**record, **metrics, **where}
        problem = f"cannot compute this config's run_id: {_one_line(err)}"
        return {**record, "status": "invalid", "error": problem, **where}
    record |= noise
    if recorded is None:
        return {**record, "run_id": ident, "status": "invalid", "error": "metrics.json has no run_id", **where}
    if recorded != ident:
        problem = (
            f"metrics.json ({status}) belongs to another config (its run_id {recorded}, this config's {ident}); "
            "rerun this config to replace it"
        )
        return {**record, "run_id": ident, "status": "stale", "error": problem, **where}
    return {**record, **metrics, **where}


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
