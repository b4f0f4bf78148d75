"""Run every sweep of the chosen claims through the real sweep machinery: ``python launch.py -m …`` subprocesses.

Each part of a claim is one sweep in ``<out>/sweeps/<claim>/<part>`` (a fixed ``hydra.sweep.dir``), so running the
same command again resumes: gsdefense skips runs whose complete ``status: ok`` result is there and continues
interrupted ones from their checkpoints. A part whose grid varies only DP settings (``Part.fused``) uses the fused
variant of the chosen launcher (basic → fused, local → fused_local, slurm → fused_slurm); the others use the plain
one. Sweeps are independent: ``jobs`` of them run at once, each logging to ``<sweep dir>/reproduce.log``.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gsdefense.errors import ConfigError
from gsdefense.reproduce.spec import Claim, Part

LAUNCH = Path(__file__).resolve().parents[2] / "launch.py"
# --launcher value → (launcher for fused parts, launcher for the others); None: Hydra's basic launcher.
LAUNCHERS: dict[str, tuple[str, str | None]] = {
    "basic": ("fused", None),
    "fused": ("fused", None),
    "local": ("fused_local", "local"),
    "fused_local": ("fused_local", "local"),
    "slurm": ("fused_slurm", "slurm"),
    "fused_slurm": ("fused_slurm", "slurm"),
}
LOG = "reproduce.log"


@dataclass(frozen=True)
class Sweep:
    """One ``python launch.py -m`` command: a claim's part at a scale."""

    claim: str
    part: Part
    overrides: tuple[str, ...]  # the job overrides (config), in order
    hydra: tuple[str, ...]  # launcher, sweep dir
    seeds: int
    sweep_dir: Path

    @property
    def key(self) -> str:
        return f"{self.claim}/{self.part.name}"

    def argv(self) -> list[str]:
        return [sys.executable, str(LAUNCH), "-m", *self.overrides, *self.hydra]

    def shell(self) -> str:
        """The command as a user types it in the repository root."""
        return "python launch.py -m " + " ".join(shlex.quote(a) for a in (*self.overrides, *self.hydra))


def seed_override(seeds: int) -> str:
    return "seed=" + ",".join(str(s) for s in range(seeds))


def launcher_for(part: Part, launcher: str) -> str | None:
    if launcher not in LAUNCHERS:
        raise ConfigError("--launcher", f"unknown launcher {launcher!r}.", f"use one of {', '.join(LAUNCHERS)}.")
    fused, plain = LAUNCHERS[launcher]
    return fused if part.fused else plain


def plan(
    claims: Sequence[Claim], *, scale: str, out: Path, seeds: int | None, launcher: str = "basic", smoke: bool = False
) -> list[Sweep]:
    """Every sweep of ``claims``: seeds = ``seeds`` or each claim's own at the scale (1 with ``smoke``)."""
    if seeds is not None and seeds < 1:
        raise ConfigError("--seeds", f"must be at least 1 (got {seeds}).", "e.g. --seeds 3.")
    sweeps = []
    for claim in claims:
        n = seeds or (claim.seeds if scale == "embedded" else claim.paper_seeds)
        sweeps += plan_parts(claim.id, claim.parts, scale=scale, out=out, seeds=n, launcher=launcher, smoke=smoke)
    return sweeps


def plan_parts(
    name: str, parts: Sequence[Part], *, scale: str, out: Path, seeds: int, launcher: str = "basic", smoke: bool = False
) -> list[Sweep]:
    """The sweeps of ``parts`` in ``<out>/sweeps/<name>/<part>``, ``seeds`` seeds each (1 with ``smoke``)."""
    if seeds < 1:
        raise ConfigError("--seeds", f"must be at least 1 (got {seeds}).", "e.g. --seeds 3.")
    n = 1 if smoke else seeds
    sweeps = []
    for part in parts:
        sweep_dir = out / "sweeps" / name / part.name
        launch = launcher_for(part, launcher)
        hydra = ((f"hydra/launcher={launch}",) if launch else ()) + (f"hydra.sweep.dir={sweep_dir}",)
        config = (*part.overrides(scale=scale, smoke=smoke), seed_override(n))
        sweeps.append(Sweep(name, part, config, hydra, n, sweep_dir))
    return sweeps


@dataclass(frozen=True)
class SweepResult:
    sweep: Sweep
    returncode: int
    seconds: float


def run_one(sweep: Sweep, *, echo: Callable[[str], None] = print) -> SweepResult:
    """Run one sweep to the end (its log in ``<sweep dir>/reproduce.log``); never raises on a failed run."""
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    echo(f"[{sweep.key}] {sweep.shell()}")
    start = time.perf_counter()
    with open(sweep.sweep_dir / LOG, "w") as log:
        log.write(sweep.shell() + "\n")
        log.flush()
        proc = subprocess.run(sweep.argv(), stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    tail = _summary_line(sweep.sweep_dir / LOG)
    echo(f"[{sweep.key}] exit {proc.returncode} after {seconds:.0f} s{': ' + tail if tail else ''}")
    return SweepResult(sweep, proc.returncode, seconds)


def _summary_line(log: Path) -> str:
    """The sweep summary's first line (``sweep DIR: 3 ok``), if the log has one."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    found = [line for line in lines if line.startswith("sweep ") and ": " in line]
    return found[-1].split(": ", 1)[1] if found else ""


def longest_first(sweeps: Sequence[Sweep], seconds: dict[str, float] | None = None) -> list[Sweep]:
    """The sweeps by expected time, longest first (a sweep's last measured seconds, else its part's ``cost`` × seeds;
    ties keep their order), so that with several at once the long ones do not start last."""
    seconds = seconds or {}
    return sorted(sweeps, key=lambda s: -(seconds.get(s.key) or s.part.cost * s.seeds))


def run_all(sweeps: Sequence[Sweep], *, jobs: int = 1, echo: Callable[[str], None] = print) -> list[SweepResult]:
    """Run the sweeps, ``jobs`` at a time, in the given order; results in the same order."""
    if jobs < 1:
        raise ConfigError("--jobs", f"must be at least 1 (got {jobs}).", "e.g. --jobs 2.")
    if jobs == 1:
        return [run_one(s, echo=echo) for s in sweeps]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda s: run_one(s, echo=echo), sweeps))


def _first_value(override: str) -> str:
    """``key=a,b,c`` → ``key=a`` (the sweep's first job); lists (``[3,4]``) and deletions stay as they are."""
    key, sep, value = override.partition("=")
    return f"{key}={value.split(',', 1)[0]}" if sep and not value.startswith("[") else override


def compose_first(sweep: Sweep):
    """The sweep's first job's config, composed in-process as ``launch.py`` would (no training, no data)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    first = [_first_value(o) for o in sweep.overrides if not o.startswith("hydra.")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(LAUNCH.parent / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=first)
    finally:
        GlobalHydra.instance().clear()


def compose_check(sweep: Sweep) -> str | None:
    """Compose the sweep's first job and identify it (``run_id`` validates every group); the error as one line, or
    None. Checks the plan without training or data (paper-scale data need not be present)."""
    from gsdefense.identity import run_id

    try:
        run_id(compose_first(sweep))
    except Exception as err:  # noqa: BLE001 - any composition error is reported as one line
        return " ".join(f"{type(err).__name__}: {err}".split())
    return None
