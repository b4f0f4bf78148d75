"""``python -m gsdefense.reproduce``: the verdict rule on constructed numbers, the orientation of every claim's
checks, preconditions, the sweep plan (launchers, resume-safe commands, both scales), the real CLI in smoke mode,
and the committed report (docs/reproduction/claims.csv)."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from gsdefense.errors import ConfigError
from gsdefense.reproduce import runner, stats
from gsdefense.reproduce.__main__ import main
from gsdefense.reproduce.checks import Arm, AtMost, BudgetCompare, Compare, Exceeds, OneSample, Present, Scaled, Trend
from gsdefense.reproduce.claims import BY_ID, CLAIMS, select
from gsdefense.reproduce.evidence import _telemetry_row
from gsdefense.reproduce.spec import merge
from gsdefense.reproduce.tables import CLAIM_COLUMNS
from tests.conftest import ROOT

COMMITTED = ROOT / "docs" / "reproduction" / "claims.csv"


# --- the verdict rule -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lo", "hi", "null", "claimed", "verdict"),
    [
        (0.1, 0.9, 0.0, 0.5, "reproduced"),  # beyond the null, claimed size inside
        (0.6, 0.9, 0.0, 0.5, "reproduced"),  # the whole interval beyond the claim
        (0.1, 0.4, 0.0, 0.5, "not reproduced"),  # a real effect, smaller than claimed
        (-0.9, -0.1, 0.0, 0.0, "not reproduced"),  # the opposite direction
        (-0.2, 0.9, 0.0, 0.5, "inconclusive"),  # straddles both
        (-0.2, 0.2, 0.0, 0.0, "inconclusive"),  # direction-only claim, interval around 0
        (-0.3, 0.1, -0.5, 0.0, "reproduced"),  # non-inferiority: no 2× reduction, no increase excluded
        (-0.9, -0.6, -0.5, 0.0, "not reproduced"),
    ],
)
def test_decide(lo: float, hi: float, null: float, claimed: float, verdict: str) -> None:
    assert stats.decide(lo, hi, null=null, claimed=claimed) == verdict


def test_decide_rejects_a_claim_below_its_null() -> None:
    with pytest.raises(ValueError, match="claimed"):
        stats.decide(0.0, 1.0, null=0.5, claimed=0.1)


def _welch_by_hand(a: list[float], b: list[float], level: float) -> tuple[float, float, float]:
    """(t of H0: mean(a) ≤ mean(b), interval low, high) from Welch's formulas."""
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    q = sps.t.ppf(0.5 + level / 2, df)
    d = a.mean() - b.mean()
    return d / se, d - q * se, d + q * se


def test_welch_matches_the_formulas_and_its_verdicts() -> None:
    vanilla, dp = [0.030, 0.026, 0.031, 0.027, 0.029], [0.011, 0.013, 0.010, 0.012, 0.009]
    out = stats.welch(vanilla, dp, labels=("vanilla", "dp"), claimed=0.5 * np.mean(vanilla))
    t, lo, hi = _welch_by_hand(vanilla, dp, 0.90)
    assert out.statistic == pytest.approx(t) and out.ci == pytest.approx((lo, hi))
    assert out.effect == pytest.approx(0.0176) and out.verdict == "reproduced" and out.p_value < 1e-4
    assert out.n_seeds == 5 and out.arms["dp"].mean == pytest.approx(0.011)
    # The same data against a claim of a 95 % cut: excluded.
    assert stats.welch(vanilla, dp, claimed=0.95 * np.mean(vanilla)).verdict == "not reproduced"
    # Noisy arms: the interval holds 0 and the claim.
    noisy = stats.welch([0.0, 0.04, 0.0, 0.05], [0.01, 0.02, 0.0, 0.03], claimed=0.01)
    assert noisy.verdict == "inconclusive" and noisy.ci[0] < 0 < 0.01 < noisy.ci[1]


def test_one_sample_numbers_and_no_spread() -> None:
    out = stats.one_sample([1.0, 2.0, 3.0])
    assert out.statistic == pytest.approx(2 / (1 / math.sqrt(3)))
    assert out.ci == pytest.approx((2 - sps.t.ppf(0.95, 2) / math.sqrt(3), 2 + sps.t.ppf(0.95, 2) / math.sqrt(3)))
    flat = stats.one_sample([0.3, 0.3, 0.3], null=0.5, claimed=0.8)
    assert flat.ci == (0.3, 0.3) and flat.verdict == "not reproduced"


def test_one_run_per_arm_is_inconclusive() -> None:
    out = stats.welch([0.5], [0.1, 0.2], labels=("a", "b"))
    assert out.verdict == "inconclusive" and "fewer than 2 ok runs with a value in a (n=1)" in out.reason


def test_trend_sign_and_interval() -> None:
    x = np.repeat([0.0, 0.5, 2.0], 4)
    y = -x + np.random.default_rng(0).normal(0, 0.1, x.size)
    falls = stats.trend(x, y, sign=-1)
    assert falls.verdict == "reproduced" and falls.statistic < -0.8 and falls.ci[0] > 0
    assert stats.trend(x, y, sign=+1).verdict == "not reproduced"


def test_combine() -> None:
    assert stats.combine(["reproduced", "not testable here"]) == "reproduced"
    assert stats.combine(["reproduced", "inconclusive"]) == "inconclusive"
    assert stats.combine(["inconclusive", "not reproduced"]) == "not reproduced"
    assert stats.combine(["not testable here"] * 2) == "not testable here"


# --- checks: arms, preconditions --------------------------------------------------------------------------------------
def _frame(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_arm_selects_by_config_values_with_a_tolerance() -> None:
    df = _frame(**{"dp.clip": [4.0, 4.0000001, 2.0], "attack.mode": ["oneshot", "multipoison", "oneshot"],
                   "asr": [0.1, 0.2, 0.3]})  # fmt: skip
    assert Arm("p", "x", {"dp.clip": 4}).values({"p": df}, "asr") == [0.1, 0.2]
    assert Arm("p", "x", {"dp.clip": 4, "attack.mode": "oneshot"}).values({"p": df}, "asr") == [0.1]
    assert Arm("p", "x", {"dp.noise": 1}).values({"p": df}, "asr") == []  # a column the runs lack: no rows
    assert Arm("q", "x").values({"p": df}, "asr") == []


def test_preconditions_make_a_check_not_testable_with_the_measured_reason() -> None:
    frames = {"v": _frame(asr=[0.0, 0.0, 0.0]), "d": _frame(asr=[0.0, 0.1, 0.0])}
    check = Compare("cut", "asr", Arm("v", "vanilla"), Arm("d", "dp"), claimed=Scaled("high", 0.5),
                    requires=(Present(Arm("v", "vanilla"), "asr", "vanilla success {mean:.2f} (n={n})"),))  # fmt: skip
    out = check.evaluate(frames)
    assert out.verdict == "not testable here" and out.reason == "vanilla success 0.00 (n=3)"
    assert out.arms["dp"].mean == pytest.approx(1 / 30)  # the numbers are still reported
    assert AtMost(Arm("v", "v"), "asr", 0.5, "high").failure(frames) is None
    assert AtMost(Arm("d", "d"), "asr", 0.01, "{mean:.3f}").failure(frames) == "0.033"
    gap = Exceeds(Arm("d", "d"), Arm("v", "v"), "asr", "from {low:.1f} to {high:.2f}", by=0.1)
    assert gap.failure(frames) == "from 0.0 to 0.03"
    # Success in every seed but spread out: present by its mean, not significant by a t-test on 3 seeds.
    spread = {"v": _frame(asr=[0.6, 0.1, 0.1])}
    assert Present(Arm("v", "v"), "asr", "t", above=0.1, significant=False).failure(spread) is None
    assert Present(Arm("v", "v"), "asr", "t {mean:.2f}", above=0.1).failure(spread) == "t 0.27"


def test_budget_compare_picks_each_mechanism_best_setting_within_the_budget() -> None:
    rows = [("fixed", s, asr, rad) for s, asr, rad in ((0.5, 0.4, 0.02), (1.0, 0.2, 0.08), (2.0, 0.0, 0.4))
            for _ in range(3)]  # fmt: skip
    rows += [("adaptive", s, asr, rad) for s, asr, rad in ((1.0, 0.3, 0.01), (4.0, 0.0, 0.05)) for _ in range(3)]
    df = pd.DataFrame(rows, columns=["mech", "dp.noise", "asr", "rad"])
    df["asr"] += np.random.default_rng(0).normal(0, 0.01, len(df))
    check = BudgetCompare("b", "asr", "rad", 0.1, "dp.noise", Arm("p", "fixed", {"mech": "fixed"}),
                          Arm("p", "adaptive", {"mech": "adaptive"}))  # fmt: skip
    out = check.evaluate({"p": df})
    assert list(out.arms) == ["fixed dp.noise=1", "adaptive dp.noise=4"]  # σ=2 is over budget
    assert out.verdict == "reproduced"
    over = dataclasses.replace(check, budget=0.001).evaluate({"p": df})
    assert over.verdict == "not testable here" and "no setting of fixed, adaptive" in over.reason


# --- every claim's checks point the way the claim does ----------------------------------------------------------------
def _rows(arm: Arm, metric: str, values: np.ndarray, extra: dict | None = None) -> pd.DataFrame:
    return pd.DataFrame({**{k: [v] * len(values) for k, v in {**arm.where, **(extra or {})}.items()},
                         metric: values, "seed": range(len(values))})  # fmt: skip


def _data(check, *, supports: bool) -> dict[str, pd.DataFrame]:
    """Frames on which ``check`` holds clearly (supports) or its opposite does."""
    rng = np.random.default_rng(1)
    noise = lambda: rng.normal(0, 0.01, 6)  # noqa: E731
    parts: dict[str, list[pd.DataFrame]] = {}
    if isinstance(check, Compare):
        hi, lo = (1.0, 0.0) if supports else (0.0, 1.0)
        for arm, level in ((check.high, hi), (check.low, lo)):
            parts.setdefault(arm.part, []).append(_rows(arm, check.metric, level + noise()))
    elif isinstance(check, OneSample):
        level = check.claimed + 1 if supports else check.null - 1
        parts[check.arm.part] = [_rows(check.arm, check.metric, level + noise())]
    elif isinstance(check, Trend):
        for x in (0.1, 1.0, 4.0):
            y = (check.sign if supports else -check.sign) * x + noise()
            parts.setdefault(check.arm.part, []).append(_rows(check.arm, check.metric, y, {check.x: x}))
    elif isinstance(check, BudgetCompare):
        hi, lo = (0.5, 0.0) if supports else (0.0, 0.5)
        for arm, level in ((check.high, hi), (check.low, lo)):
            rows = _rows(arm, check.metric, level + noise(), {check.by: 1.0, check.budget_metric: check.budget / 2})
            parts.setdefault(arm.part, []).append(rows)
    return {part: pd.concat(frames, ignore_index=True) for part, frames in parts.items()}


@pytest.mark.parametrize("claim", CLAIMS, ids=[c.id for c in CLAIMS])
def test_every_check_is_oriented_as_its_claim(claim) -> None:
    for check in claim.checks:
        bare = dataclasses.replace(check, requires=())  # preconditions are tested above
        assert bare.evaluate(_data(bare, supports=True)).verdict == "reproduced", (claim.id, check.name)
        assert bare.evaluate(_data(bare, supports=False)).verdict == "not reproduced", (claim.id, check.name)


def test_claims_are_complete() -> None:
    assert list(BY_ID) == ["H1", "H2", "H3", "H4", "H5", "H6", "H7", "L1", "L2", "S1", "N1"]
    for claim in CLAIMS:
        labels = [a.label for a in claim.checks[0].arms]
        assert claim.ours in labels, claim.id
        assert claim.seeds >= 3 and claim.parts and claim.checks
        parts = {p.name for p in claim.parts}
        assert {a.part for c in claim.checks for a in c.arms} <= parts, claim.id
    assert [c.id for c in select(["h2", "S1"])] == ["H2", "S1"]
    with pytest.raises(ConfigError, match="--claims: unknown claim id.s. X9"):
        select(["X9"])


def test_telemetry_summary_of_a_run() -> None:
    epochs = pd.DataFrame({"epoch": [1, 2, 3, 4], "shaped_grad_ratio": [math.e**2, math.e, math.e, 1.0],
                           "shaped_grad_cosine": [-0.8, -0.5, -0.3, -0.1]})  # fmt: skip
    row = _telemetry_row(epochs.iloc[::-1])  # order of rows does not matter, epochs do
    assert row["log_ratio"] == pytest.approx(1.0) and row["grad_ratio_gmean"] == pytest.approx(math.e)
    assert row["neg_cosine"] == pytest.approx(0.425)
    assert row["ratio_fall"] == pytest.approx(2.0) and row["cos_fall"] == pytest.approx(0.7)


# --- the sweep plan ---------------------------------------------------------------------------------------------------
def test_merge_keeps_the_first_position_and_the_last_value() -> None:
    assert merge(["a=1", "b=2", "dp.noise=0"], ["c=3", "a=9"], ["~dp.noise"]) == ["a=9", "b=2", "~dp.noise", "c=3"]


def test_plan_launchers_seeds_and_folders(tmp_path: Path) -> None:
    sweeps = {s.key: s for s in runner.plan([BY_ID["H2"]], scale="embedded", out=tmp_path, seeds=None)}
    dp, vanilla = sweeps["H2/dp"], sweeps["H2/vanilla"]
    assert dp.hydra == ("hydra/launcher=fused", f"hydra.sweep.dir={tmp_path}/sweeps/H2/dp")
    assert vanilla.hydra == (f"hydra.sweep.dir={tmp_path}/sweeps/H2/vanilla",)  # Hydra's basic launcher
    assert dp.overrides[-1] == "seed=" + ",".join(map(str, range(10))) and "dataset=breast_cancer" in dp.overrides
    paper = runner.plan([BY_ID["H2"]], scale="paper", out=tmp_path, seeds=None, launcher="slurm")
    assert [s.hydra[0] for s in paper] == ["hydra/launcher=fused_slurm", "hydra/launcher=slurm"]
    assert all("dataset=breast_cancer" not in s.overrides and s.overrides[-1] == "seed=0,1,2" for s in paper)
    smoke = runner.plan([BY_ID["H2"]], scale="embedded", out=tmp_path, seeds=None, smoke=True)
    assert all(s.overrides[-1] == "seed=0" and "optimizer.epochs=2" in s.overrides for s in smoke)
    assert runner.plan([BY_ID["H2"]], scale="embedded", out=tmp_path, seeds=None) == list(sweeps.values())
    with pytest.raises(ConfigError, match="--launcher"):
        runner.plan([BY_ID["H2"]], scale="paper", out=tmp_path, seeds=3, launcher="pbs")
    with pytest.raises(ConfigError, match="--seeds: must be at least 1"):
        runner.plan([BY_ID["H2"]], scale="paper", out=tmp_path, seeds=0)


@pytest.mark.parametrize("scale", ["embedded", "paper"])
def test_dry_run_composes_every_sweep(scale: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["--dry-run", "--scale", scale, "--out", "/nonexistent/out"]) == 0
    text = capsys.readouterr().out
    n = sum(len(c.parts) for c in CLAIMS)
    assert text.count(": composes") == n and f"{n} sweeps, 0 that do not compose" in text
    assert "python launch.py -m +experiment=hong_fig4_label_flip" in text


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["--claims", "H2", "Q1", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --claims: unknown claim id(s) Q1.")
    assert main(["--jobs", "0", "--dry-run"]) == 2


# --- the real CLI -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smoke_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "repro"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "gsdefense.reproduce", "--smoke", "--claims", "H2", "S1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for sweep in ("H2/dp", "H2/vanilla", "S1/attack"):
        assert (out / "sweeps" / sweep / "multirun.yaml").exists(), sweep
    assert len(list((out / "sweeps").glob("*/*/*/metrics.json"))) == 3 + 1 + 4
    claims = pd.read_csv(out / "claims.csv")
    assert tuple(claims.columns) == CLAIM_COLUMNS and list(claims["id"]) == ["H2", "S1"]
    assert set(claims["verdict"]) <= set(stats.VERDICTS) and (claims["n_seeds"] == 1).all()
    s1 = pd.read_csv(out / "data" / "S1.csv")
    assert len(s1) == 4 and s1["test_loss"].gt(0).all()  # derived from each run's model.pt
    readme = (out / "README.md").read_text()
    assert "# Which claims hold" in readme and "![H2](figures/H2.png)" in readme and "hydra.sweep.dir=" in readme
    assert (out / "figures" / "S1.png").stat().st_size > 10_000
    assert (out / ".gitignore").read_text().splitlines()[-1] == "sweeps/"


# --- the committed report ---------------------------------------------------------------------------------------------
def test_committed_report_has_every_claim_with_three_seeds() -> None:
    if not COMMITTED.exists():
        pytest.skip(f"{COMMITTED.relative_to(ROOT)} is not generated yet: run python -m gsdefense.reproduce")
    table = pd.read_csv(COMMITTED)
    assert tuple(table.columns) == CLAIM_COLUMNS
    assert sorted(table["id"]) == sorted(BY_ID), "regenerate it with python -m gsdefense.reproduce"
    assert table["verdict"].isin(stats.VERDICTS).all()
    assert (table["n_seeds"] >= 3).all(), table.loc[table["n_seeds"] < 3, ["id", "n_seeds"]]
    assert (ROOT / "docs" / "reproduction" / "README.md").exists()
