"""Where each job of a sweep writes: ``hydra.sweep.subdir`` resolved per job as Hydra's launcher will, then
checked (part of ``gsdefense.grid``'s up-front check).

Every job needs a folder of its own inside the sweep folder: a constant subdir (``same``) made two jobs write
one folder and the summary count one run; one that leaves the sweep folder (``../x-${hydra.job.num}``) made two ok
runs "no runs". A folder a live run holds (``gsdefense.runlock``) is refused too.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from gsdefense.errors import ConfigError, one_line, short_path

SUBDIR = "hydra.sweep.subdir"
# What hydra.sweep.subdir may use and still be resolved without each job's full config.
CHEAP_SUBDIR = re.compile(r"\$\{hydra\.job\.(num|id|override_dirname|name)\}")


def override_dirname(master: DictConfig, lines: list[str], parsed: Callable[[str], Any]) -> str:
    """Hydra's ``override_dirname`` of a job (``parsed``: an override line → Hydra's parsed override)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname

    conf = master.hydra.job.config.override_dirname
    task = [parsed(line) for line in lines if not parsed(line).is_hydra_override()]
    return get_overrides_dirname(overrides=task, exclude_keys=list(conf.exclude_keys), item_sep=conf.item_sep,
                                 kv_sep=conf.kv_sep)  # fmt: skip


def job_subdir(master: DictConfig, full: DictConfig, task_of: Callable[[], DictConfig], idx: int, lines: list[str],
               parsed: Callable[[str], Any]) -> str:  # fmt: skip
    """The job's ``hydra.sweep.subdir``, resolved as Hydra's launcher will resolve it (``full``: the job's group
    combination composed; ``task_of()``: the job's task config, built only when the subdir needs it)."""
    expr = OmegaConf.to_container(master.hydra.sweep, resolve=False)["subdir"]
    dirname = override_dirname(master, lines, parsed)
    if isinstance(expr, str) and not CHEAP_SUBDIR.sub("", expr).count("${"):
        values = {"num": idx, "id": idx, "override_dirname": dirname, "name": master.hydra.job.get("name")}
        return CHEAP_SUBDIR.sub(lambda m: str(values[m.group(1)]), expr)
    task = task_of()
    full = copy.deepcopy(full)  # the subdir refers to task values or resolvers: the job's whole config
    with read_write(full), open_dict(full):
        for key in task:
            full[key] = task[key]
        full.hydra.job.num = full.hydra.job.id = idx
        full.hydra.job.override_dirname = dirname
    try:
        return str(OmegaConf.select(full, SUBDIR, throw_on_resolution_failure=True))
    except Exception as err:  # noqa: BLE001
        raise ConfigError(SUBDIR, f"cannot be resolved ({one_line(err)}).") from None


def check_folders(sweep_dir: Path, subdirs: list[str]) -> list[Path]:
    """Each job's folder: distinct, inside the sweep folder, a usable path, not held by a live run."""
    from gsdefense.paths import check_path
    from gsdefense.runlock import busy, holder

    root = Path(os.path.normpath(sweep_dir))
    folders, owner = [], {}
    for idx, subdir in enumerate(subdirs):
        folder = Path(os.path.normpath(root / subdir))
        if folder != root and root not in folder.parents:
            raise ConfigError(
                SUBDIR,
                f"puts job {idx} in {short_path(folder)}, outside the sweep folder {short_path(root)} (the summary "
                "and a resumed sweep would not find it).",
                "use a path inside the sweep folder, e.g. ${hydra.job.num} (the default).",
            )
        if folder in owner:
            raise ConfigError(
                SUBDIR,
                f"gives jobs {owner[folder]} and {idx} the same folder {short_path(folder)}: one would overwrite the "
                "other's result.",
                "make it differ per job, e.g. ${hydra.job.num} (the default) or ${hydra.job.override_dirname}.",
            )
        owner[folder] = idx
        check_path(folder, field=SUBDIR)
        if (who := holder(folder)) is not None:
            raise busy(folder, who, field="hydra.sweep.dir")
        folders.append(folder)
    return folders
