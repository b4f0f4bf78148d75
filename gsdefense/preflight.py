"""A Hydra callback that checks where a run or sweep will write, before Hydra writes anything there.

Hydra creates the output folder and its ``.hydra/`` files before the task starts; an unusable folder
would otherwise end in Hydra's traceback. Here it is one line and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gsdefense.cache import check_dir
from gsdefense.errors import ConfigError


def _check(config: DictConfig, key: str) -> None:
    try:
        check_dir(str(config.hydra[key].dir), field=f"hydra.{key}.dir")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


class OutputCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "sweep")
