"""``gsdefense.reproduce``'s verdict rules on constructed numbers: the interval → verdict rule (reproduced / smaller
than claimed / opposite direction / inconclusive), every test's formulas (Welch, paired, one-sample, Fieller ratio,
trend), Holm within a claim, non-inferiority margins scored against their margin, paper levels only on their own
dataset, preconditions (material effect in test images, censoring), and the orientation of every claim's checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from gsdefense.reproduce import stats, verdicts
from gsdefense.reproduce.arms import Arm, Paper, Scaled, dataset_id
from gsdefense.reproduce.checks import BudgetCompare, Compare, OneSample, Ratio, Trend
from gsdefense.reproduce.claims import BY_ID, CLAIMS
from gsdefense.reproduce.evaluate import run_checks
from gsdefense.reproduce.preconditions import AtMost, Exceeds, Images, Present, Uncensored


# --- the verdict rule -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lo", "hi", "null", "claimed", "verdict"),
    [
        (0.1, 0.9, 0.0, 0.5, "reproduced"),  # beyond the null, claimed size inside
        (0.6, 0.9, 0.0, 0.5, "reproduced"),  # the whole interval beyond the claim
        (0.1, 0.4, 0.0, 0.5, "smaller than claimed"),  # a real effect, smaller than claimed
        (-0.1, 0.4, 0.0, 0.5, "smaller than claimed"),  # the claimed size excluded, the direction not
        (-0.9, -0.1, 0.0, 0.0, "opposite direction"),
        (-0.9, -0.1, 0.0, 0.5, "opposite direction"),
        (-0.2, 0.9, 0.0, 0.5, "inconclusive"),  # straddles both
        (-0.2, 0.2, 0.0, 0.0, "inconclusive"),  # direction-only claim, interval around 0
        (-0.3, 0.1, -0.5, -0.5, "reproduced"),  # non-inferiority: the margin is both null and claimed
        (-0.9, -0.6, -0.5, -0.5, "opposite direction"),  # a 2× cut is excluded the other way
    ],
)
def test_decide(lo: float, hi: float, null: float, claimed: float, verdict: str) -> None:
    assert verdicts.decide(lo, hi, null=null, claimed=claimed) == verdict


def test_decide_rejects_a_claim_below_its_null() -> None:
    with pytest.raises(ValueError, match="claimed"):
        verdicts.decide(0.0, 1.0, null=0.5, claimed=0.1)


def test_combine_worst_check_decides() -> None:
    assert verdicts.combine(["reproduced", "not testable here"]) == "reproduced"
    assert verdicts.combine(["reproduced", "inconclusive"]) == "inconclusive"
    assert verdicts.combine(["inconclusive", "smaller than claimed"]) == "smaller than claimed"
    assert verdicts.combine(["smaller than claimed", "opposite direction", "reproduced"]) == "opposite direction"
    assert verdicts.combine(["not testable here"] * 2) == "not testable here"


def test_holm_levels_and_adjusted_p() -> None:
    levels, adjusted = verdicts.holm([0.04, 0.001, 0.02])
    assert levels == pytest.approx([0.05, 0.05 / 3, 0.05 / 2])
    assert adjusted == pytest.approx([0.04, 0.003, 0.04])  # 0.02·2 = 0.04; then max(0.04, 0.04·1)
    # Step-down: once one is not rejected, none after it is, whatever its own p.
    _, adjusted = verdicts.holm([0.03, 0.026, 0.01])
    assert adjusted == pytest.approx([0.052, 0.052, 0.03])


# --- the tests' formulas ----------------------------------------------------------------------------------------------
def _welch_by_hand(a: list[float], b: list[float], level: float) -> tuple[float, float, float]:
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    q = sps.t.ppf(0.5 + level / 2, df)
    d = a.mean() - b.mean()
    return d / se, d - q * se, d + q * se


def test_welch_matches_the_formulas_and_its_verdicts() -> None:
    vanilla, dp = [0.030, 0.026, 0.031, 0.027, 0.029], [0.011, 0.013, 0.010, 0.012, 0.009]
    out = stats.compare(vanilla, dp, labels=("vanilla", "dp"), claimed=0.5 * np.mean(vanilla))
    t, lo, hi = _welch_by_hand(vanilla, dp, 0.90)
    assert out.test == "one-sided Welch t-test"
    assert out.statistic == pytest.approx(t) and out.ci == pytest.approx((lo, hi))
    assert out.effect == pytest.approx(0.0176) and out.verdict == "reproduced" and out.p_value < 1e-4
    assert stats.compare(vanilla, dp, claimed=0.95 * np.mean(vanilla)).verdict == "smaller than claimed"
    assert stats.compare(dp, vanilla).verdict == "opposite direction"
    noisy = stats.compare([0.0, 0.04, 0.0, 0.05], [0.01, 0.02, 0.0, 0.03], claimed=0.01)
    assert noisy.verdict == "inconclusive" and noisy.ci[0] < 0 < 0.01 < noisy.ci[1]


def test_arms_that_ran_the_same_seeds_are_paired() -> None:
    # A seed effect shared by both arms (0, 1, 2 …) that Welch sees as noise and the paired test removes.
    high, low = [1.1, 2.0, 3.2, 4.1], [1.0, 1.9, 3.0, 4.0]
    paired = stats.compare(high, low, seeds=([0, 1, 2, 3], [0, 1, 2, 3]))
    d = np.array(high) - np.array(low)
    assert paired.test == "one-sided paired t-test"
    assert paired.statistic == pytest.approx(d.mean() / (d.std(ddof=1) / 2)) and paired.verdict == "reproduced"
    assert stats.compare(high, low).verdict == "inconclusive"  # Welch: the seed spread swamps 0.1
    # Values are matched by seed, not by position.
    shuffled = stats.compare(high, low[::-1], seeds=([0, 1, 2, 3], [3, 2, 1, 0]))
    assert shuffled.statistic == pytest.approx(paired.statistic)
    # Different or repeated seeds: Welch.
    assert stats.compare(high, low, seeds=([0, 1, 2, 3], [0, 1, 2, 4])).test == "one-sided Welch t-test"
    assert stats.compare(high, low, seeds=([0, 0, 1, 1], [0, 0, 1, 1])).test == "one-sided Welch t-test"
    assert not stats.paired([0], [0])


def test_one_sample_numbers_and_no_spread() -> None:
    out = stats.one_sample([1.0, 2.0, 3.0])
    assert out.statistic == pytest.approx(2 / (1 / math.sqrt(3)))
    assert out.ci == pytest.approx((2 - sps.t.ppf(0.95, 2) / math.sqrt(3), 2 + sps.t.ppf(0.95, 2) / math.sqrt(3)))
    flat = stats.one_sample([0.3, 0.3, 0.3], null=0.5, claimed=0.8)
    assert flat.ci == (0.3, 0.3) and flat.verdict == "opposite direction"
    assert stats.one_sample([0.6, 0.62, 0.61], null=0.5, claimed=0.8).verdict == "smaller than claimed"


def test_ratio_fieller_interval_and_test() -> None:
    dp, sgd = [0.30, 0.25, 0.35, 0.28], [0.95, 0.93, 0.97, 0.94]
    out = stats.ratio(dp, sgd, null=0.5, claimed=0.97)
    assert out.effect == pytest.approx(np.mean(dp) / np.mean(sgd))
    assert out.verdict == "opposite direction" and out.ci[1] < 0.5
    # The p-value is the Welch test of dp − 0.5·sgd > 0; each interval end is where that one-sided t hits its
    # critical value.
    a, b = np.array(dp), np.array(sgd)
    welch = sps.ttest_ind(a, 0.5 * b, equal_var=False, alternative="greater")
    assert out.p_value == pytest.approx(welch.pvalue)
    for end, side in ((out.ci[0], "greater"), (out.ci[1], "less")):
        assert sps.ttest_ind(a, end * b, equal_var=False, alternative=side).pvalue == pytest.approx(0.05, abs=1e-6)
    kept = stats.ratio([0.9, 0.88, 0.92], [0.95, 0.93, 0.96], seeds=([0, 1, 2], [0, 1, 2]), null=0.5, claimed=0.9)
    assert kept.test.startswith("one-sided paired") and kept.verdict == "reproduced"
    # A denominator indistinguishable from 0: the interval has no upper end.
    wide = stats.ratio([0.3, 0.2, 0.25], [0.05, 0.5, 0.01], null=0.5)
    assert math.isinf(wide.ci[1])
    assert stats.ratio([0.3, 0.2], [0.0, 0.0]).verdict == "inconclusive"


def test_one_run_per_arm_is_inconclusive() -> None:
    out = stats.compare([0.5], [0.1, 0.2], labels=("a", "b"))
    assert out.verdict == "inconclusive" and "fewer than 2 ok runs with a value in a (n=1)" in out.reason


def test_trend_sign_and_interval() -> None:
    x = np.repeat([0.0, 0.5, 2.0], 4)
    y = -x + np.random.default_rng(0).normal(0, 0.1, x.size)
    falls = stats.trend(x, y, sign=-1)
    assert falls.verdict == "reproduced" and falls.statistic < -0.8 and falls.ci[0] > 0
    assert stats.trend(x, y, sign=+1).verdict == "opposite direction"


# --- checks: arms, levels, preconditions ------------------------------------------------------------------------------
def _frame(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_arm_selects_by_config_values_with_a_tolerance() -> None:
    df = _frame(**{"dp.clip": [4.0, 4.0000001, 2.0], "attack.mode": ["oneshot", "multipoison", "oneshot"],
                   "asr": [0.1, 0.2, 0.3], "seed": [0, 1, 0]})  # fmt: skip
    assert Arm("p", "x", {"dp.clip": 4}).values({"p": df}, "asr") == [0.1, 0.2]
    assert Arm("p", "x", {"dp.clip": 4}).pairs({"p": df}, "asr") == ([0.1, 0.2], [0, 1])
    assert Arm("p", "x", {"dp.clip": 4, "attack.mode": "oneshot"}).values({"p": df}, "asr") == [0.1]
    assert Arm("p", "x", {"dp.noise": 1}).values({"p": df}, "asr") == []  # a column the runs lack: no rows
    assert Arm("q", "x").values({"p": df}, "asr") == []


# H3 at embedded scale (committed data): vanilla RAD 0.0478, C=4 0.042; "does not reduce by 2×" has its null at
# −0.5 × vanilla. It read "not reproduced" at p < 1e-6 because its claimed value was 0 instead of the margin.
_VAN = [0.0478 + d for d in (-0.006, 0.004, 0.001, -0.003, 0.005, -0.002, 0.0, 0.003, -0.004, 0.002)]
_C4 = [0.0420 + d for d in (0.005, -0.004, 0.002, -0.006, 0.003, 0.001, -0.002, 0.004, -0.003, 0.0)]


def test_does_not_reduce_is_scored_against_its_margin_compare() -> None:
    frames = {"v": _frame(rad=_VAN, seed=range(10)), "d": _frame(rad=_C4, seed=range(10))}
    check = Compare("C=4 does not halve", "rad", Arm("d", "C=4"), Arm("v", "vanilla"), null=Scaled("low", -0.5))
    out = check.evaluate(frames)
    assert out.null == pytest.approx(-0.5 * np.mean(_VAN)) and out.claimed == out.null
    assert out.effect < 0 and out.ci[0] > out.null and out.verdict == "reproduced", out.reason


def test_does_not_reduce_is_scored_against_its_margin_one_sample_and_ratio() -> None:
    frames = {"d": _frame(asr=[0.62, 0.58, 0.65, 0.6], seed=range(4)),
              "s": _frame(asr=[0.9, 0.92, 0.88, 0.91], seed=range(4))}  # fmt: skip
    above = OneSample("ASR above 0.5", "asr", Arm("d", "dp"), null=0.5).evaluate(frames)
    assert above.claimed == 0.5 and above.verdict == "reproduced"
    kept = Ratio("retains", "asr", Arm("d", "dp"), Arm("s", "sgd"), null=0.5).evaluate(frames)
    assert kept.claimed == 0.5 and kept.verdict == "reproduced" and kept.test.startswith("one-sided paired")


def test_budget_compare_and_trend_are_direction_only() -> None:
    rows = [("fixed", s, asr, rad) for s, asr, rad in ((0.5, 0.4, 0.02), (1.0, 0.2, 0.08), (2.0, 0.0, 0.4))
            for _ in range(3)]  # fmt: skip
    rows += [("adaptive", s, asr, rad) for s, asr, rad in ((1.0, 0.3, 0.01), (4.0, 0.0, 0.05)) for _ in range(3)]
    df = pd.DataFrame(rows, columns=["mech", "dp.noise", "asr", "rad"])
    df["asr"] += np.random.default_rng(0).normal(0, 0.01, len(df))
    df["seed"] = list(range(3)) * (len(df) // 3)
    check = BudgetCompare("b", "asr", "rad", 0.1, "dp.noise", Arm("p", "fixed", {"mech": "fixed"}),
                          Arm("p", "adaptive", {"mech": "adaptive"}))  # fmt: skip
    out = check.evaluate({"p": df})
    assert list(out.arms) == ["fixed dp.noise=1", "adaptive dp.noise=4"]  # σ=2 is over budget
    assert out.verdict == "reproduced" and out.null == out.claimed == 0 and out.test == "one-sided paired t-test"
    over = dataclasses.replace(check, budget=0.001).evaluate({"p": df})
    assert over.verdict == "not testable here" and "no setting of fixed, adaptive" in over.reason
    x = pd.DataFrame({"s": [0.1, 1, 4] * 3, "y": [3, 2, 1] * 3})
    trend = Trend("falls", "y", Arm("p", "runs"), "s", -1).evaluate({"p": x})
    assert trend.null == trend.claimed == 0 and trend.verdict == "reproduced"


def test_paper_levels_hold_only_on_their_dataset() -> None:
    def frames(name: str, classes) -> dict[str, pd.DataFrame]:
        base = {"dataset.name": [name] * 5, "dataset.classes": [classes] * 5, "seed": range(5)}
        return {"v": pd.DataFrame({**base, "rad": [0.03, 0.028, 0.031, 0.027, 0.029]}),
                "d": pd.DataFrame({**base, "rad": [0.022, 0.02, 0.024, 0.021, 0.023]})}  # fmt: skip

    check = Compare("halves", "rad", Arm("v", "vanilla"), Arm("d", "C=4"),
                    claimed=Paper(Scaled("high", 0.5), "fashion_mnist_3_4", "Fig. 4a"))  # fmt: skip
    on_paper = check.evaluate(frames("fashion_mnist", (3, 4)))
    assert on_paper.claimed == pytest.approx(0.5 * 0.029) and on_paper.verdict == "smaller than claimed"
    elsewhere = check.evaluate(frames("breast_cancer", None))
    assert elsewhere.claimed == 0.0 and elsewhere.verdict == "reproduced"
    assert elsewhere.note == "direction only (Fig. 4a's number is on FashionMNIST-3/4, these runs on breast_cancer)"
    assert dataset_id(pd.DataFrame({"dataset.name": ["fashion_mnist"], "dataset.classes": ["(3, 4)"]})) == \
        "fashion_mnist_3_4"  # fmt: skip
    # An absolute threshold from another dataset falls back to null 0 as well (H5's "RAD > 0.1" on Purchase-100).
    h5 = OneSample("RAD above 0.1", "rad", Arm("v", "σ=1"), null=Paper(0.1, "purchase100", "Fig. 6"),
                   claimed=Paper(0.612, "purchase100", "Fig. 6")).evaluate(frames("digits", None))  # fmt: skip
    assert (h5.null, h5.claimed, h5.verdict) == (0.0, 0.0, "reproduced") and h5.note.startswith("null 0 (Fig. 6's")


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
    spread = {"v": _frame(asr=[0.6, 0.1, 0.1])}
    assert Present(Arm("v", "v"), "asr", "t", above=0.1, significant=False).failure(spread) is None
    assert Present(Arm("v", "v"), "asr", "t {mean:.2f}", above=0.1).failure(spread) == "t 0.27"


def test_an_attack_that_moves_a_test_image_or_two_is_not_testable() -> None:
    # H2 on breast_cancer (committed data): vanilla RAD 0.0072 ± 0.0102 over 10 seeds on 143 test rows — significant
    # by a t-test against 0 (p ≈ 0.03), but about one test image.
    rad = [0.0, 0.0, 0.0, 0.014, 0.0, 0.028, 0.0, 0.0, 0.014, 0.016]
    frames = {"v": _frame(rad_early_stop=rad, n_test=[143] * 10)}
    assert stats.present(rad)[0]
    claim = BY_ID["H2"]
    material = claim.checks[0].requires[0]
    assert isinstance(material.above, Images) and material.above.k == 5
    why = dataclasses.replace(material, arm=Arm("v", "vanilla")).failure(frames)
    assert why.startswith("the attack does not hurt the vanilla model by more than 5 test images here")
    assert "(vanilla rad_early_stop 0.0072 ± 0.01, n=10; 5 images = 0.035)" in why
    strong = {"v": _frame(rad_early_stop=[0.05, 0.06, 0.055, 0.045], n_test=[143] * 4)}
    assert dataclasses.replace(material, arm=Arm("v", "vanilla")).failure(strong) is None


def test_n1_needs_most_vanilla_models_flagged_by_neural_cleanse_not_a_t_test_of_the_index() -> None:
    # The paper-scale vanilla arm: every model's target flagged (indices 2.65, 4.00, 2.77), yet a one-sided t-test of
    # the mean index against 2 gives p = 0.06 with 3 seeds: the precondition follows Neural Cleanse's per-model rule.
    detects = dataclasses.replace(BY_ID["N1"].checks[0].requires[0], arm=Arm("v", "vanilla"))
    index = [2.646401, 3.998112, 2.767875]
    assert not stats.present(index, above=2.0)[0]
    assert detects.failure({"v": _frame(nc_detected=[True, True, True], nc_target_anomaly_index=index)}) is None
    why = detects.failure({"v": _frame(nc_detected=[True, False, False], nc_target_anomaly_index=[2.5, 1.2, 0.9])})
    assert why == "Neural Cleanse flags the backdoor target in only 33% of the vanilla models (n=3; it must flag most)"


def test_h5_censoring_is_one_rule_for_both_checks() -> None:
    rows = pd.DataFrame({"dp.clip": [8.0] * 3 + [1.0] * 3, "asr": [1.0, 1.0, 0.9, 0.0, 0.1, 0.0],
                         "mean_poisons_needed": [1.1, 1.2, 1.0, math.nan, 15, math.nan],
                         "attack.max_poisons": [20] * 6, "seed": [0, 1, 2] * 2})  # fmt: skip
    claim = BY_ID["H5"]
    outs = [c.evaluate({"clip": rows}) for c in claim.checks[:2]]
    assert [o.verdict for o in outs] == ["not testable here"] * 2
    assert all("censored: at most 20 poisons tried per target (the paper: 100)" in o.reason for o in outs)
    assert "and 97 % of the targets in C=1 did not fall within them (n=3)" in outs[0].reason
    none = rows.assign(asr=[1.0, 1.0, 0.9, 0.0, 0.0, 0.0])
    assert "and none of the targets in C=1 fell within them (n=3)" in claim.checks[0].evaluate({"clip": none}).reason
    assert Uncensored(Arm("clip", "C=1", {"dp.clip": 1.0}), 100).failure({"clip": rows.assign(**{
        "attack.max_poisons": 100})}) is None  # fmt: skip


def test_holm_within_a_claim() -> None:
    # Three checks: two clear, one with p ≈ 0.03 — significant alone, not after Holm (0.03·… > 0.05 at its rank).
    rng = np.random.default_rng(3)
    frames = {"p": pd.DataFrame({"a": 1 + rng.normal(0, 0.1, 5), "b": 1 + rng.normal(0, 0.1, 5),
                                 "c": [0.5, 0.1, 0.3, 0.6, -0.05], "seed": range(5)})}  # fmt: skip
    checks = tuple(OneSample(m, m, Arm("p", "runs")) for m in ("a", "b", "c"))
    claim = dataclasses.replace(BY_ID["N1"], checks=checks)
    alone = checks[2].evaluate(frames)
    assert alone.verdict == "reproduced" and 0.025 < alone.p_value < 0.05
    a, b, c = run_checks(claim, frames)
    assert a.verdict == b.verdict == "reproduced" and a.alpha < 0.05
    assert c.alpha == pytest.approx(0.05) and c.p_holm == pytest.approx(alone.p_value)  # last in line: full α
    strict = run_checks(dataclasses.replace(claim, checks=(checks[2], checks[2], checks[0])), frames)
    assert [o.verdict for o in strict] == ["inconclusive", "inconclusive", "reproduced"]
    assert strict[0].p_holm == pytest.approx(min(1.0, 2 * alone.p_value))


# --- every claim's checks point the way the claim does ----------------------------------------------------------------
def _rows(arm: Arm, metric: str, values: np.ndarray, extra: dict | None = None) -> pd.DataFrame:
    return pd.DataFrame({**{k: [v] * len(values) for k, v in {**arm.where, **(extra or {})}.items()},
                         metric: values, "seed": range(len(values))})  # fmt: skip


def _data(check, *, supports: bool) -> dict[str, pd.DataFrame]:
    """Frames on which ``check`` holds clearly (supports) or its opposite does."""
    rng = np.random.default_rng(1)
    noise = lambda: rng.normal(0, 0.01, 6)  # noqa: E731
    parts: dict[str, list[pd.DataFrame]] = {}
    if isinstance(check, Compare | Ratio):
        hi, lo = ((1.0, 0.2) if supports else (0.05, 1.0)) if isinstance(check, Ratio) else \
            ((1.0, 0.0) if supports else (0.0, 1.0))  # fmt: skip
        for arm, level in ((check.high, hi), (check.low, lo)):
            parts.setdefault(arm.part, []).append(_rows(arm, check.metric, level + noise()))
    elif isinstance(check, OneSample):
        level = 2.0 if supports else -1.0
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
        assert bare.evaluate(_data(bare, supports=False)).verdict == "opposite direction", (claim.id, check.name)
