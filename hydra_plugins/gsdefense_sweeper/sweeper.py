"""``hydra/sweeper=gsdefense`` (the default): Hydra's basic sweeper, with a cheaper up-front check of the grid.

Before launching, the basic sweeper composes every job's config once just to check that it can be composed,
and the launcher then composes each one again: a 40-job grid pays ~40 extra compositions (~2.5 s). A grid's
jobs combine a few values per key, so checking one job per distinct ``key=value`` (the first job that has it)
catches the same errors: an unknown option, a bad key, a value of the wrong type. Every job is still
composed and fully validated when it runs.

This module is imported whenever Hydra scans for plugins: it imports neither torch nor gsdefense.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore


@dataclass
class GsdefenseSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.gsdefense_sweeper.sweeper.GsdefenseSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="gsdefense", node=GsdefenseSweeperConf, provider="gsdefense")


def covering_jobs(batch: Sequence[Sequence[str]]) -> list[Sequence[str]]:
    """The jobs that first use each distinct override of ``batch``, in order (the first job always)."""
    seen: set[str] = set()
    chosen = []
    for overrides in batch:
        new = set(overrides) - seen
        if new or not chosen:
            chosen.append(overrides)
            seen |= new
    return chosen


class GsdefenseSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(covering_jobs(batch))
