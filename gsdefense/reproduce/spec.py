"""What a claim is made of: its sweeps (``Part``) at each scale, its checks, and how it is reported.

A ``Part`` is one ``python launch.py -m`` sweep. Its overrides are layered (later layers win, key by key, in the
position of the key's first appearance, so a command is the same every time and a rerun resumes):

1. ``+experiment=<preset>`` (the paper's figure or table),
2. ``grid``: the arms the claim compares (both scales),
3. ``embedded`` (``--scale embedded``: offline data, small schedule) or ``paper`` (``--scale paper``),
4. ``smoke`` (``--smoke``: the smallest schedule that still runs every step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gsdefense.reproduce.arms import Frames
from gsdefense.reproduce.checks import Check

SCALES = ("embedded", "paper")
ROOT = Path(__file__).resolve().parents[2]
REPORTS = {"embedded": Path("docs/reproduction"), "paper": Path("docs/reproduction-paper")}  # relative to ROOT


def override_key(override: str) -> str:
    """The key an override sets: ``dp.clip`` for ``dp.clip=1``, ``~dp.noise`` for ``~dp.noise``."""
    return override.split("=", 1)[0]


def merge(*layers: Sequence[str]) -> list[str]:
    """Layers of overrides → one list: a later value replaces an earlier one in the earlier one's position.

    ``~key`` (delete) and ``key=…`` are the same setting: whichever comes last wins.
    """
    out: dict[str, str] = {}
    for layer in layers:
        for override in layer:
            out[override_key(override).lstrip("~+")] = override  # an existing key keeps its position
    return list(out.values())


@dataclass(frozen=True)
class Part:
    """One sweep of a claim (its folder: ``<out>/sweeps/<claim>/<name>``)."""

    name: str
    preset: str | None
    grid: tuple[str, ...] = ()
    embedded: tuple[str, ...] = ()
    paper: tuple[str, ...] = ()
    smoke: tuple[str, ...] = ()
    fused: bool = False  # the grid varies only dp.clip / dp.noise / dp.delta / optimizer.lr (and the seed)
    derive: str | None = None  # per-run values computed from the run's files (``evidence.DERIVE``)
    note: str = ""  # why the embedded setup is what it is (the setup itself is generated from the runs)
    paper_note: str = ""  # why the paper-scale setup is what it is (a schedule cut here, and its measured effect)
    cost: float = 0.0  # CPU seconds per seed at paper scale on one core here (from measured runs): longest first

    def overrides(self, *, scale: str, smoke: bool = False) -> list[str]:
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        preset = [f"+experiment={self.preset}"] if self.preset else []
        return merge(
            preset, self.grid, self.embedded if scale == "embedded" else self.paper, self.smoke if smoke else ()
        )


@dataclass(frozen=True)
class Claim:
    """One claim of the papers: its statement, the paper's number, the sweeps and checks that test it here."""

    id: str
    text: str
    source: str
    paper: str  # the paper's number(s), as the paper gives them
    parts: tuple[Part, ...]
    checks: tuple[Check, ...]  # the first is the primary check: its numbers fill the summary table
    ours: str  # label of the primary check's arm whose mean ± sd is "ours" (the paper_value's counterpart)
    paper_value: float | None = None
    seeds: int = 3  # default number of seeds at the embedded scale (--seeds overrides)
    paper_seeds: int = 3  # ... at paper scale
    notes: tuple[str, ...] = field(default_factory=tuple)  # deviations and caveats, shown under the claim
    findings: tuple[Callable[[Frames], str | None], ...] = ()  # text the runs give beside the checks (findings.py)
    paper_skip: str = ""  # why --scale paper does not run it on a 2-core CPU (measured), if it does not

    def part(self, name: str) -> Part:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(f"{self.id} has no part {name!r}")


def estimate(scale: str) -> str:
    """The committed report's measured wall-clock time of a full run at ``scale`` (its timing.csv)."""
    path = ROOT / REPORTS[scale] / "timing.csv"
    try:
        saved = pd.read_csv(path)
    except (OSError, ValueError):
        return "not measured yet"
    wall = saved.loc[saved["sweep"] == "all (wall clock)", "seconds"]
    cpus = saved["cpus"].dropna() if "cpus" in saved else pd.Series(dtype=float)
    where = f"{int(cpus.iloc[0])} CPU cores" if len(cpus) else "the machine that generated it"
    if len(wall):
        return f"{float(wall.iloc[0]) / 60:.0f} min on {where}"
    total = pd.to_numeric(saved["seconds"], errors="coerce").sum()
    return f"about {total / 60:.0f} min of sweeps on {where} (no full run recorded)"
