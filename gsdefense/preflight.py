"""A Hydra callback that checks where a run or sweep will write, before Hydra writes anything there.

Hydra creates the output folder and its ``.hydra/`` files before the task starts; an unusable folder (a file in
the way, a name too long, a symlink loop, a full filesystem) would otherwise end in Hydra's traceback. Here it is
one line and exit code 2. A single run also takes its folder's lock here (``gsdefense.runlock``), before Hydra
writes ``.hydra/``: a second run started into a folder where another is still training is refused, naming it.
Hydra turns an exception in a callback into a warning and goes on, so every problem ends the process here.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gsdefense.errors import ConfigError


def _fail(err: ConfigError) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def _folder(config: DictConfig, key: str) -> str:
    from gsdefense.errors import one_line

    try:
        return str(config.hydra[key].dir)
    except Exception as err:  # noqa: BLE001 - e.g. an interpolation that cannot resolve
        raise ConfigError(f"hydra.{key}.dir", f"cannot be resolved ({one_line(err)}).") from None


def _refuse_preset_lists(config: DictConfig) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gsdefense.grid import key_of, multiple_presets

    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)  # as typed: no ${…} resolved
    lines = [line for line in task if key_of(line) == "experiment"]
    for override in OverridesParser.create().parse_overrides(lines):
        if isinstance(override.value(), list):
            raise multiple_presets(override.value())


class OutputCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from gsdefense.paths import check_dir
        from gsdefense.runlock import acquire

        try:
            _refuse_preset_lists(config)
            run_dir = check_dir(_folder(config, "run"), field="hydra.run.dir")
            acquire(run_dir, field="hydra.run.dir")
        except ConfigError as err:
            _fail(err)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from gsdefense.paths import check_creatable

        try:  # created once the grid is validated (hydra/sweeper=gsdefense)
            check_creatable(_folder(config, "sweep"), field="hydra.sweep.dir")
        except ConfigError as err:
            _fail(err)
