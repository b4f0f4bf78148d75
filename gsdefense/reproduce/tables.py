"""The report's machine-readable tables: ``claims.csv`` (one row per claim: its verdict, the primary check's numbers
and the summary table's text), ``checks.csv`` (one row per check) and ``data/<id>.csv`` (the ok runs a claim's
verdict was computed from). ``claims.csv`` and ``checks.csv`` are merged by claim id: a run that tests some claims
replaces their rows and keeps the others'."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gsdefense.reproduce.evaluate import ClaimResult
from gsdefense.reproduce.evidence import TELEMETRY
from gsdefense.reproduce.setup import GROUPS
from gsdefense.reproduce.verdicts import Outcome, Summary

CLAIM_COLUMNS = ("id", "verdict", "scale", "n_seeds", "test", "statistic", "p_value", "ci_low", "ci_high", "effect",
                 "null", "claimed", "ours_mean", "ours_sd", "paper_value", "reason", "claim", "source", "paper",
                 "ours", "headline")  # fmt: skip
CHECK_COLUMNS = ("id", "check", "verdict", "n_seeds", "test", "statistic", "p_value", "p_holm", "alpha", "ci_low",
                 "ci_high", "effect", "null", "claimed", "note", "arms", "reason")  # fmt: skip


def ours(result: ClaimResult) -> tuple[Summary, int]:
    """("ours": the claim's ``ours`` arm of its primary check; the fewest seeds among that check's arms)."""
    claim, check = result.claim, result.claim.checks[0]
    summary = next((s for label, s in result.primary.arms.items() if label.startswith(claim.ours)), None)
    if summary is None:
        arm = next((a for a in check.arms if a.label == claim.ours), check.arms[0])
        summary = Summary.of(arm.values(result.frames, check.metric))
    seeds = [
        int(rows["seed"].nunique()) if "seed" in rows else 0 for rows in (a.rows(result.frames) for a in check.arms)
    ]
    return summary, min(seeds, default=0)


def _numbers(o: Outcome) -> dict:
    lo, hi = o.ci if o.ci else (None, None)
    fields = ("test", "statistic", "p_value", "effect", "null", "claimed")
    return {"verdict": o.verdict, **{f: getattr(o, f) for f in fields}, "ci_low": lo, "ci_high": hi}


def claim_rows(results: Sequence[ClaimResult], *, scale: str, text: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """``text``: claim id → (ours, headline) as the summary table shows them."""
    rows = []
    for r in results:
        summary, seeds = ours(r)
        rows.append({**_numbers(r.primary), "id": r.claim.id, "verdict": r.verdict, "scale": scale, "n_seeds": seeds,
                     "ours_mean": summary.mean, "ours_sd": summary.sd, "paper_value": r.claim.paper_value,
                     "reason": r.reason, "claim": r.claim.text, "source": r.claim.source, "paper": r.claim.paper,
                     "ours": text[r.claim.id][0], "headline": text[r.claim.id][1]})  # fmt: skip
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


def check_rows(results: Sequence[ClaimResult]) -> pd.DataFrame:
    rows = [
        {**_numbers(o), "id": r.claim.id, "check": o.name, "n_seeds": o.n_seeds, "reason": o.reason,
         "p_holm": o.p_holm, "alpha": o.alpha if o.ci else None, "note": o.note,
         "arms": "; ".join(f"{label}: {s.text()}" for label, s in o.arms.items())}
        for r in results
        for o in r.outcomes
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(CHECK_COLUMNS))


def merged(path: Path, new: pd.DataFrame, *, order: Sequence[str]) -> pd.DataFrame:
    """``new``'s rows, and the rows of ``path`` (if any) for claims ``new`` does not have, in ``order`` of ids."""
    if path.exists():
        old = pd.read_csv(path)
        if "id" in old:
            kept = old[~old["id"].isin(set(new["id"]))]
            # new's columns, in new's order: an older file's order (or its dropped columns) must not carry over
            new = pd.concat([kept, new], ignore_index=True).reindex(columns=new.columns)
    rank = {claim_id: i for i, claim_id in enumerate(order)}
    return new.sort_values("id", key=lambda s: s.map(rank).fillna(len(rank)), kind="stable").reset_index(drop=True)


def run_data(result: ClaimResult, *, out: Path) -> pd.DataFrame:
    """The ok runs behind a claim: part, seed, the settings its arms select on and its Setup shows, the metrics its
    checks test, and the run's folder relative to ``out``."""
    checks = result.claim.checks
    keys = {k for check in checks for arm in check.arms for k in arm.where} | {getattr(c, "x", "") for c in checks}
    keys |= {k for _, group in GROUPS for k in group} | {"dataset.name", "dataset.classes"}
    metrics = {c.metric for c in checks} | {"clean_acc", "best_clean_acc", "asr", "rad", "rad_best", "rad_early_stop",
                                             "acc_ref_best", "n_train", "n_poison", "n_clean", "n_test", "n_removed",
                                             "certified_upper_bound", "nc_detected"}  # fmt: skip
    metrics |= {p.metric for c in checks for p in c.requires if hasattr(p, "metric")}
    metrics |= {"test_loss", "clean_loss", *TELEMETRY}
    frames = []
    for part, df in result.frames.items():
        if df.empty:
            continue
        cols = ["seed", *sorted(k for k in keys if k in df), *sorted(m for m in metrics if m in df)]
        rel = [os.path.relpath(d, out) for d in df["run_dir"]]
        frames.append(df[[c for c in dict.fromkeys(cols) if c in df]].assign(part=part, run_dir=rel))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["part"])
