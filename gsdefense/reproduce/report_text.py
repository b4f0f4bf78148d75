"""The report's words: how verdicts are computed (``RULES``), what the scales are (``SCALES``), and one claim's
section (``section_body``: its checks, figure, generated Setup, findings and the exact sweep commands)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from gsdefense.reproduce.evaluate import ClaimResult
from gsdefense.reproduce.runner import Sweep
from gsdefense.reproduce.setup import part_setup
from gsdefense.reproduce.stats import Outcome
from gsdefense.reproduce.verdicts import ALPHA

RULES = f"""\
Every check is oriented so that a larger effect e supports the claim, and names a *null* value (no effect; for a
"does not reduce by 2×" claim, minus that 2× reduction: a non-inferiority margin) and the *claimed* value (the
paper's size of the effect, from the same figure and dataset; where the runs are on another dataset, or the paper
gives no size, the check is *direction only*: claimed = null). With [lo, hi] the two-sided confidence interval of e
over seeds at the check's Holm level (so lo > null exactly when its one-sided test rejects):

- **reproduced**: lo > null and hi ≥ claimed (an effect beyond the null, compatible with the claimed size);
- **smaller than claimed**: null ≤ hi < claimed (the data exclude the claimed size, not the claim's direction);
- **opposite direction**: hi < null (the data exclude every effect in the claimed direction);
- **inconclusive**: lo ≤ null and hi ≥ claimed (the interval holds both), or fewer than 2 ok runs in an arm;
- **not testable here**: a precondition fails on these runs (e.g. the attack moves fewer than 5 test images
  even without DP, or too few poisons were tried to know the outcome), with the measured reason.

Within a claim, α = {ALPHA} (one-sided) is split across its testable checks by Holm's step-down rule: the k-th
smallest p is tested at α / (m − k + 1), its interval is computed at that level, and a check after a
non-significant one is not reproduced. Arms that ran the same seeds are compared seed by seed (paired t-test),
others by Welch's t-test; one-sample t-tests, a ratio test with Fieller's interval, and Spearman trend tests with a
bootstrap interval cover the rest. A claim is reproduced when all its testable checks are; otherwise its verdict
is its worst check's (opposite direction, then smaller than claimed, then inconclusive).

**Test-set sampling is not in the intervals.** Every arm of a claim is scored on the same test set, so the
intervals cover training randomness (seeds) only, and a verdict is about that test set: each Setup gives its size
and what one test image is worth (on FashionMNIST-3/4, 2,000 images: one image is 0.0005 of accuracy, and the
binomial sd of an accuracy near 0.95 is 0.005). The original-results table at paper scale adds that binomial term."""


SCALES = """\
**Scales.** `--scale embedded` runs each claim on offline stand-ins (digits, breast_cancer) with small schedules: it
tests whether the *mechanism* a claim describes shows up there, not the papers' numbers, and its verdicts say
"at embedded scale". `--scale paper` runs every claim whose data is FashionMNIST(-3/4) on the papers' datasets with
their schedules, on this 2-core machine (where a schedule had to be cut, the claim's Setup says so and what the cut
changes, measured); claims on Purchase-100 or CIFAR-10 are listed as *needs <dataset>* with their commands. Each
claim's Setup below is generated from its runs' own configs."""


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def _num(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _levels(o: Outcome) -> str:
    if o.ci is None:
        return ""
    text = f"{_num(o.null)} / {_num(o.claimed)}"
    return f"{text} ({o.note})" if o.note else text


def _commands(title: str, sweeps: Sequence[Sweep], timing: dict[str, float]) -> list[str]:
    out = [title, ""]
    for s in sweeps:
        took = f" ({timing[s.key]:.0f} s)" if s.key in timing else ""
        out += [f"- `{s.part.name}`{took}:", "", "  ```bash", f"  {s.shell()}", "  ```"]
    return [*out, ""]


def setup(r: ClaimResult, *, scale: str) -> list[str]:
    """The Setup paragraph: a line per part from its runs' configs, then why it is so (notes) and the findings."""
    c = r.claim
    lines = [line for line in (part_setup(name, rows) for name, rows in r.frames.items()) if line]
    why = [p.paper_note if scale == "paper" else p.note for p in c.parts]
    notes = [*dict.fromkeys(n for n in why if n), *c.notes]
    out = ["**Setup** (from the runs' configs):", "", *(f"- {line}" for line in lines)] if lines else []
    out += ["", " ".join(notes)] if notes else []
    return [*out, "", *(f"{f}\n" for f in r.findings)]


def section_body(r: ClaimResult, *, scale: str, sweeps: Sequence[Sweep], paper: Sequence[Sweep] | None,
                 timing: dict[str, float], interval: Callable[[Outcome], str]) -> list[str]:  # fmt: skip
    """A claim's part of the README."""
    c = r.claim
    out = [f"## {c.id} at {scale} scale: {r.verdict}", "", f"**Claim.** {c.text}.", "",
           f"**Source.** {c.source}. **Paper:** {c.paper}.", ""]  # fmt: skip
    if r.needs:
        run = f"python -m gsdefense.reproduce --scale {scale} --claims {c.id}"
        out += [f"**{r.verdict[0].upper()}{r.verdict[1:]}.** {r.needs}", ""]
        needs = r.verdict.startswith("needs ")
        when = "Once it is there" if needs else "Where there is the time (a cluster: add `--launcher slurm`)"
        return out + _commands(f"{when}, `{run}` runs:", sweeps, {})
    arms = ["; ".join(f"{k}: {s.text()}" for k, s in o.arms.items()) or "—" for o in r.outcomes]
    rows = [(o.name, o.test, a, interval(o) or o.reason, _levels(o), o.verdict) for o, a in zip(r.outcomes, arms)]
    header = ("check", "test", "arms: mean ± sd (n)", "p (Holm), effect [CI]", "null / claimed", "verdict")
    out += [table(header, rows), ""]
    out += [f"- *{o.name}*: not testable here: {o.reason}" for o in r.outcomes if o.verdict == "not testable here"]
    out += ["", f"![{c.id}](figures/{c.id}.png)", "", *setup(r, scale=scale)]
    out += _commands("**Sweeps** (from the repository root; each resumes when run again):", sweeps, timing)
    if paper is not None:
        run = f"python -m gsdefense.reproduce --scale paper --claims {c.id}"
        out += _commands(f"**Paper scale** (the papers' data and schedules): `{run}` runs", paper, {})
    if r.not_ok:
        out += ["**Runs that are not ok** (left out of the tests):", ""]
        out += [*(f"- `{d}` {st}: {e}" for d, st, e in r.not_ok), ""]
    if r.problems:
        out += ["**Problems while deriving values:**", "", *(f"- {p}" for p in r.problems), ""]
    return out
