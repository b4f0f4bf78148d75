"""Many ``launch.py`` command lines in one Python process: each runs the CLI's own code (``launch.py`` as
``__main__``: Hydra's ``main`` with its callbacks and sweeper, and whatever launch.py does around it) with
``sys.argv`` set, its stderr and exit code captured. One interpreter start instead of one per bad input.

    python -m tests.cli_batch < cases.json   # [{"args": [...], "cwd": "..."}] -> one JSON list on stdout
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Exit(Exception):
    """``launch.py`` left through ``exit_now``: its exit code."""

    def __init__(self, code: int | str | None) -> None:
        super().__init__(code)
        if isinstance(code, str):
            print(code, file=sys.stderr)
        self.code = code if isinstance(code, int) else (0 if code is None else 1)


def _exit_now(code: int | str | None) -> None:
    raise _Exit(code)


def run_case(args: list[str]) -> dict:
    """``python launch.py ARGS`` in this process: its ``__main__`` block as it is, ``exit_now`` turned into an
    exception (it would end the process)."""
    from hydra.core.global_hydra import GlobalHydra

    import gsdefense.launch

    gsdefense.launch.exit_now = _exit_now
    GlobalHydra.instance().clear()
    err, out = io.StringIO(), io.StringIO()
    sys.argv = [str(ROOT / "launch.py"), *args]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            runpy.run_path(str(ROOT / "launch.py"), run_name="__main__")
            code = 0
        except _Exit as done:
            code = done.code
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        except BaseException:  # noqa: BLE001 - what the CLI would print as a traceback
            traceback.print_exc()
            code = 1
    with contextlib.suppress(ImportError):
        from gsdefense.runlock import release_all

        release_all()
    return {"args": args, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    results = []
    for case in json.load(sys.stdin):
        os.chdir(case.get("cwd") or ROOT)
        results.append(run_case(case["args"]))
    sys.__stdout__.write(json.dumps(results))


if __name__ == "__main__":
    main()


def run_batch(cases: list[dict], *, timeout: int = 300) -> list[dict]:
    """``cases`` (``{"args": [...], "cwd": ...}``) run by one ``python -m tests.cli_batch``; their results."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-m", "tests.cli_batch"], input=json.dumps(cases), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)
