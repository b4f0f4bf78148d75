"""Entry point: compose the Hydra config and call ``gsdefense.run``.

python launch.py                                   # one run, embedded digits data
python launch.py -m dp.clip=0.1,1,4 dp.noise=0.4,4.0 attack=blend
"""

import sys

import hydra
from omegaconf import DictConfig

from gsdefense.errors import ConfigError
from gsdefense.launch import check_config_dirs, exit_now, main_task


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    return main_task(cfg)


if __name__ == "__main__":
    try:
        check_config_dirs(sys.argv[1:])
        main()
    except ConfigError as err:  # a malformed YAML in --config-dir, before Hydra reads it
        print(f"error: {err}", file=sys.stderr)
        exit_now(2)
    except SystemExit as done:
        exit_now(done.code)
    exit_now(0)
