"""``python launch.py --help`` is gsdefense's own help (conf/hydra/help/gsdefense.yaml), through the real CLI."""

from __future__ import annotations

import re

import pytest

from tests.conftest import CONF, run_cli


@pytest.fixture(scope="module")
def help_text() -> str:
    proc = run_cli("--help", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_help_lists_every_group_and_option_from_conf(help_text: str) -> None:
    assert help_text.startswith("gsdefense:")
    for group in ("dataset", "model", "attack", "defense", "optimizer", "dp", "scenario"):
        line = re.search(rf"^{group}: (.*)$", help_text, re.MULTILINE)
        assert line, f"no line for group {group}"
        assert line.group(1).split(", ") == _options(group)
    assert "Powered by Hydra" not in help_text  # not Hydra's generic help


def test_help_names_presets_launchers_keys_and_examples(help_text: str) -> None:
    presets = re.search(r"^experiment: (.*)$", help_text, re.MULTILINE).group(1).split(", ")
    assert presets == _options("experiment") and "hong_fig4_label_flip" in presets
    assert "+experiment=NAME" in help_text
    launchers = {p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml")} | {"basic", "fused"}
    for name in launchers:
        assert re.search(rf"^  {name} +\S", help_text, re.MULTILINE), f"launcher {name} is not described"
    for key in ("seed=", "device=", "threads=", "cache_dir=", "resume=", "telemetry.enabled="):
        assert key in help_text
    examples = [line.strip() for line in help_text.splitlines() if line.strip().startswith("python launch.py")]
    assert len(examples) >= 2 and any(" -m " in e for e in examples)
    assert "Chosen now: dataset=digits model=mlp attack=badnets" in help_text


def test_help_reflects_overrides() -> None:
    proc = run_cli("dp=none", "attack=blend", "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "attack=blend" in proc.stdout and "dp=none" in proc.stdout
