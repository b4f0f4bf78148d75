"""Entry point: compose the Hydra config and call ``gsdefense.run``.

python launch.py                                   # one run, embedded digits data
python launch.py -m dp.clip=0.1,1,4 dp.noise=0.4,4.0 attack=blend
"""

import hydra
from omegaconf import DictConfig

from gsdefense.launch import exit_now, main_task


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    return main_task(cfg)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as done:
        exit_now(done.code)
    exit_now(0)
