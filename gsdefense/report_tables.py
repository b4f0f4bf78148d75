"""summary.md's lead: the sweep's fixed settings, then one table of the metrics that matter for what was swept.

Numbers have 3 significant digits (integers stay integers); a column with no value in any row is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from gsdefense.analysis import setting_columns, summarise

IDENTITY = {"attack.name": "attack", "dataset.name": "dataset", "model.name": "model"}
DP_KEYS = ("dp.name", "dp.clip", "dp.noise")  # shown as one `defense` column
# (metric, column header): the outcome of every run, then Neural Cleanse's when a detector ran.
OUTCOMES = (("clean_acc", "clean_acc"), ("asr", "asr"), ("rad", "rad"), ("epsilon", "ε"))
DETECTOR = (
    ("nc_detected", "detected"),
    ("nc_target_anomaly_index", "anomaly index"),
    ("asr_after", "asr_after"),
    ("clean_acc_after", "clean_acc_after"),
)
SCHEDULE = (("optimizer.lr", "lr"), ("optimizer.momentum", "momentum"), ("optimizer.batch_size", "batch"),
            ("optimizer.epochs", "epochs"))  # fmt: skip


def sig(value: Any) -> str:
    """3 significant digits (0.0627, 14.9, 0.883), integers as integers (300, not 300.0); text as it is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
    value = float(value)
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    text = f"{value:.3g}"
    return "0" if float(text) == 0 else text  # never "-0"


def _values(series: pd.Series) -> str:
    vals = sorted({v for v in series if not _null(v)}, key=lambda v: (isinstance(v, str | tuple), v))
    text = ", ".join(sig(v) for v in vals)
    return text + (", null" if series.map(_null).any() else "")


def _null(value: Any) -> bool:
    return not isinstance(value, tuple) and pd.isna(value)


def _follows(df: pd.DataFrame, key: str, others: Sequence[str]) -> bool:
    """Whether ``key`` has one value per combination of ``others`` (attack.pattern_seed from attack.name)."""
    return bool(others) and bool(df.groupby(list(others), dropna=False)[key].nunique(dropna=False).max() <= 1)


def swept(ok: pd.DataFrame) -> list[str]:
    """Settings that vary among the runs and do not follow from the attack, dataset, model and DP setting."""
    varying = setting_columns(ok, varying=True)
    keep = [c for c in varying if c in IDENTITY] + [c for c in varying if c in DP_KEYS]
    rest = [c for c in varying if c not in keep and not c.startswith("dp.")]
    for key in list(rest):
        if _follows(ok, key, [*keep, *(k for k in rest if k != key)]):
            rest.remove(key)
    return [*keep, *rest]


def _attacks(ok: pd.DataFrame) -> str:
    if "attack.name" not in ok:
        return ""
    parts = []
    for attack, rows in ok.groupby("attack.name", sort=True):
        ratios = sorted(rows["attack.poison_ratio"].dropna().unique()) if "attack.poison_ratio" in rows else []
        shown = ", ".join(f"{sig(100 * r)}%" for r in ratios)
        parts.append(f"{attack} (poison ratio {shown})" if shown else str(attack))
    return "; ".join(parts)


def _schedule(ok: pd.DataFrame) -> str:
    name = _values(ok["optimizer.name"]) if "optimizer.name" in ok else ""
    parts = [
        f"{word} {_values(ok[col]).replace(', ', '/')}" for col, word in SCHEDULE if col in ok and ok[col].notna().any()
    ]
    return ", ".join(p for p in (name, *parts) if p)


def _dp_grid(ok: pd.DataFrame) -> str:
    dp = ok[ok["dp.name"].fillna("none") != "none"] if "dp.name" in ok else ok.iloc[0:0]
    parts = ["vanilla (no DP)"] if len(dp) < len(ok) else []
    if not dp.empty:
        names = _values(dp["dp.name"])
        grid = " × ".join(
            f"{word} {_values(dp[col])}" for col, word in (("dp.clip", "C"), ("dp.noise", "σ")) if col in dp
        )
        parts.append(f"{names} at {grid}" if grid else names)
    return "; ".join(parts)


def setup_lines(ok: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """The settings every run shares, then what the sweep varied (markdown list items)."""
    lines = []
    for col, word in (("dataset.name", "dataset"), ("model.name", "model")):
        if col in ok:
            lines.append(f"- {word}: {_values(ok[col])}")
    lines.append(f"- attack: {_attacks(ok)}")
    lines.append(f"- schedule: {_schedule(ok)}")
    for col, default in (("scenario.name", "scratch"), ("defense.name", "none"), ("detector.name", "none")):
        if col in ok and (ok[col].fillna(default) != default).any():
            extra = _detector(ok) if col == "detector.name" else ""
            lines.append(f"- {col.split('.')[0]}: {_values(ok[col])}{extra}")
    lines.append(f"- defense: {_dp_grid(ok)}")
    varied = [c for c in swept(ok) if c not in DP_KEYS]
    seeds = f"; seed {_values(ok['seed'])}" if "seed" in ok and ok["seed"].nunique() > 1 else ""
    lines.append(f"- swept: {', '.join(['DP setting', *varied]) if varied else 'DP setting'}{seeds}")
    counts = runs["status"].value_counts()
    lines.append(f"- runs: {len(runs)} ({', '.join(f'{n} {s}' for s, n in counts.items())})")
    return lines


def _detector(ok: pd.DataFrame) -> str:
    cols = [("detector.mitigation", "mitigation"), ("detector.anomaly_threshold", "flags an anomaly index above")]
    parts = [f"{word} {_values(ok[c])}" for c, word in cols if c in ok and ok[c].notna().any()]
    return f" ({', '.join(parts)})" if parts else ""


def _cell(mean: float, sd: float, n: int) -> str:
    if math.isnan(mean):
        return ""
    spread = "" if n < 2 or math.isnan(sd) or sd == 0 else f" ± {sig(float(f'{sd:.2g}'))}"
    return sig(mean) + spread


def results_table(ok: pd.DataFrame, *, rad: str = "rad") -> pd.DataFrame:
    """One row per setting (every swept setting but the seed), ``n`` runs, and mean ± sd of each metric that
    has a value; Neural Cleanse's detection rate, anomaly index and repaired ASR when a detector ran."""
    metrics = [(rad, rad) if m == "rad" else (m, h) for m, h in OUTCOMES]
    metrics += list(DETECTOR)
    # ε stays when a run used DP: σ = 0 runs have none, and the column then says ∞.
    private = "defense" in ok and (ok["defense"] != "vanilla").any()
    metrics = [(m, h) for m, h in metrics if m in ok and (ok[m].notna().any() or (m == "epsilon" and private))]
    if ok.empty or not metrics:
        return pd.DataFrame()
    by = swept(ok)
    numeric = [m for m, _ in metrics if m != "nc_detected"]
    stats = summarise(ok, by=by, metrics=numeric, wide=True)
    groups = [part for _, part in ok.groupby(by, dropna=False, sort=True)] if by else [ok]
    out = pd.DataFrame(index=stats.index)
    for col in (c for c in by if c not in DP_KEYS):  # the attack (dataset, model) first, then other settings
        out[IDENTITY.get(col, col)] = stats[col].map(sig)
    if any(c in by for c in DP_KEYS):
        out["defense"] = [g["defense"].iloc[0] for g in groups]
    out["n"] = [len(g) for g in groups]
    for metric, header in metrics:
        if metric == "nc_detected":
            out[header] = [_rate(g["nc_detected"]) for g in groups]
        else:
            cells = zip(groups, stats[f"{metric}_mean"], stats[f"{metric}_std"], stats[f"{metric}_count"], strict=True)
            cell = _epsilon if metric == "epsilon" else lambda _, m, s, n: _cell(m, s, n)
            out[header] = [cell(g, m, s, int(n)) for g, m, s, n in cells]
    if not stats["over"].isin(["seed", ""]).all():
        out["over"] = stats["over"]  # what else varies inside a row: pooled, and said
    out = out.loc[:, [c for c in out.columns if (out[c].astype(str) != "").any()]]
    order = sorted(range(len(groups)), key=lambda i: _row_order(groups[i], by))
    return out.iloc[order].reset_index(drop=True)


def _row_order(group: pd.DataFrame, by: Sequence[str]) -> list:
    # Identity and other settings as grouped, then vanilla before DP, DP by clip then noise.
    first = group.iloc[0]
    key = [_order(first[c]) for c in by if c not in DP_KEYS]
    vanilla = first.get("defense") == "vanilla"
    clip, noise = (first.get(c) for c in ("dp.clip", "dp.noise"))
    return [*key, (0 if vanilla else 1, 0.0, ""), *(_order(v) for v in (clip, noise))]


def _order(value: Any) -> tuple:
    # Numbers numerically, then text and lists, null last.
    if _null(value):
        return (2, 0.0, "")
    if isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _rate(detected: pd.Series) -> str:
    hits = detected.dropna().astype(bool)
    return f"{int(hits.sum())}/{len(hits)}" if len(hits) else ""


def _epsilon(group: pd.DataFrame, mean: float, sd: float, n: int) -> str:
    """ε as mean ± sd; ``∞`` for clipping without noise (σ = 0), ``–`` for vanilla runs (no DP)."""
    if not math.isnan(mean):
        return _cell(mean, sd, n)
    if (group["defense"] == "vanilla").all():
        return "–"
    noise = pd.to_numeric(group.get("dp.noise"), errors="coerce") if "dp.noise" in group else pd.Series(dtype=float)
    return "∞" if len(noise) and (noise == 0).all() else ""


def results_heading(table: pd.DataFrame, *, detector: bool) -> str:
    n = sorted(set(table["n"])) if "n" in table else []
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}" if n else "?"
    what = "seeds" if "over" not in table else "runs (see `over`)"
    values = "its one run (no sd)" if n == [1] else f"mean ± sd over its n = {seeds} {what}"
    text = (f"One row per setting (every swept setting but the seed): {values}, 3 significant digits. "
            "ε: – no DP, ∞ clipping without noise (σ = 0).")  # fmt: skip
    if detector:
        text += (" Neural Cleanse: `detected` = runs whose backdoor target was flagged / runs; `anomaly index` of "
                 "the target label; `asr_after`, `clean_acc_after` of the model after repair.")  # fmt: skip
    return text
