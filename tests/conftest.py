"""Shared fixtures: compose configs in-process, and run the real CLI. Also the markers assigned here:

- ``smoke``: the newcomer's subset (``python -m pytest -m smoke``): every test not marked ``slow`` except the
  heaviest ones listed in ``NOT_SMOKE`` (each a few seconds; their modules keep faster tests in the set, so every
  package is still exercised). A new test joins the smoke set unless it is slow or listed.
- ``torchvision``: tests of the three features that need torchvision (``model=resnet18``, a trigger image, a
  download), listed in ``NEEDS_TORCHVISION``; where torchvision cannot be imported (a CPU-only torch beside a
  mismatched or absent torchvision, ``scripts/cpu-install-check.sh``) they skip with the reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# Small enough for 2 CPU cores, big enough for the numbers to mean something.
TINY = ["optimizer.epochs=2", "optimizer.batch_size=128"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own reference-model cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GSDEFENSE_CACHE_DIR", str(cache))
    return cache


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python launch.py ARGS`` in a subprocess, as a user would type it."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


# Node ids (regular expressions, matched from the start after "tests/") of the tests that need torchvision.
NEEDS_TORCHVISION = (
    r"test_(fast_dp|fused|cuda)\.py::.*resnet18",  # parametrised over models: the resnet18 cases
    r"test_fast_dp\.py::test_auto_picks_bk_for_every_gsdefense_model",  # builds each model, resnet18 included
    r"test_run\.py::test_resnet18_takes_a_dp_step_with_groupnorm",
    r"test_attacks\.py::test_blend_trigger_from_image_file",
    r"test_inputs\.py::test_a_valid_png_trigger_still_loads",
    r"test_inputs\.py::test_failed_download_says_so_and_what_to_do",
    r"test_fashion_mnist\.py::test_a_(download_lands|failed_download_leaves)",
)

# The heaviest tests not marked slow (over ~1.5 s each on 2 idle cores, from `pytest --durations=0`; most start a
# subprocess): out of the smoke set. Each module keeps a faster test of the same code in it.
NOT_SMOKE = (
    r"test_benchmarks\.py::",  # benchmarks/ scripts, each a subprocess of its own (not the package)
    r"test_cli\.py::test_bad_input_fails_fast_with_a_message_naming_the_field\[(?!attack=nonexistent\])",  # 1 stays
    r"test_reliability\.py::test_(non_finite_and_out_of_range|unusable_folders|a_bad_job|a_runtime_error)",
    r"test_analysis\.py::test_(report_cli|notebook_runs|mixed_sweeps|load_runs_reads_config|decision_boundaries)",
    r"test_report\.py::test_(summary_has_one_row|latest_is_the_newest|odd_run_folders_are_listed|help_is_plain)",
    r"test_cache\.py::test_eight_concurrent_processes",
    r"test_figures\.py::test_(history|run)_figures_have_no_colliding_text\[.*(grid|fig5)",
    r"test_figures\.py::test_every_registered_figure_is_readable_or_says_why\[(asr_rad|gradient|privacy|training|utility)",
    r"test_presets\.py::test_one_point_of_each_preset_runs_on_embedded_data\[(hong_fig5_cnn_cifar10|nc_vs_dp|hong_fig4_st)",
    r"test_trials\.py::test_poison_frogs_batched_equals_one_after_another",
    r"test_fused\.py::test_(bad_fused_launcher_settings|stacked_clipped_sums_equal_each_members_own\[resnet18\])",
    r"test_help\.py::test_help_reflects_overrides",
    r"test_sweeper\.py::test_an_unknown_option_in_a_grid",
    r"test_attack_suite\.py::test_steinhardt_hurts_more",
    r"test_neural_cleanse\.py::test_clean_models_raise_no_flag",
    r"test_reproduce\.py::test_(dry_run_composes_every_sweep|every_check_is_oriented_as_its_claim\[N1\])",
    r"test_fashion_mnist\.py::test_cli_resnet18",
    # launch.py subprocesses and whole-sweep reports, 2.4-17 s each (measured: the smoke set took 4 min without them)
    r"test_report\.py::test_(summary_of_nc_vs_dp|a_sweep_over_datasets_with_class_lists)",
    r"test_hostile_config\.py::test_(hostile_runs_stop_with_one_line|grids_that_cannot_run|resume_no_is_refused)",
    r"test_hostile_outputs\.py::test_(a_folder_in_use|a_full_disk|a_relative_cache|a_full_tmpfs|the_notebook_says)",
    r"test_figures\.py::test_multi_attack_sweep_is_drawn_per_attack",
    r"test_reproduce_cli\.py::test_(paper_scale_without_the_data|report_only_in_a_fresh_clone|dry_run_composes)",
    r"test_reliability\.py::test_a_bad_value_in_a_grid",
    r"test_rad_reference\.py::test_a_bad_reference_fails_on_the_cli",
    r"test_noise_std\.py::test_both_given_fails_on_the_cli",
    r"test_poison_frogs\.py::test_end_to_end",
)


def _matches(nodeid: str, patterns: tuple[str, ...]) -> bool:
    name = nodeid.removeprefix("tests/")
    return any(re.match(p, name) for p in patterns)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problem: str | None = None
    checked = False
    for item in items:
        if item.get_closest_marker("slow") is None and not _matches(item.nodeid, NOT_SMOKE):
            item.add_marker(pytest.mark.smoke)
        if _matches(item.nodeid, NEEDS_TORCHVISION):
            item.add_marker(pytest.mark.torchvision)
            if not checked:  # import torchvision once, and only when a collected test needs it
                from gsdefense.optional import torchvision_problem

                problem, checked = torchvision_problem(), True
            if problem is not None:
                item.add_marker(pytest.mark.skip(reason=f"needs torchvision, which cannot be imported: {problem}"))
