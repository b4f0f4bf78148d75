"""OmegaConf resolvers of gsdefense's configs, registered by the CLI and by its Hydra plugins (light: no torch).

``${gsdefense.unique:}``: a short random tag, fixed for the process. ``conf/config.yaml`` appends it to the
time in auto-named output folders, so two runs started in the same second get folders of their own.
"""

from __future__ import annotations

import secrets

from omegaconf import OmegaConf

UNIQUE = secrets.token_hex(2)


def register() -> None:
    if not OmegaConf.has_resolver("gsdefense.unique"):
        OmegaConf.register_new_resolver("gsdefense.unique", lambda: UNIQUE)


register()
