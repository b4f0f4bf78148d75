"""How many poisons an attack crafts: ``n_poisons`` or ``round(poison_ratio·n)``, exactly one of them."""

from __future__ import annotations

from gsdefense.errors import ConfigError


def check_budget(*, poison_ratio: float | None, n_poisons: int | None) -> None:
    """Exactly one of the two is set; the ratio lies in [0, 1), the count is >= 0."""
    if (poison_ratio is None) == (n_poisons is None):
        raise ConfigError(
            "attack.n_poisons",
            f"set exactly one of attack.poison_ratio and attack.n_poisons (got {poison_ratio} and {n_poisons}).",
            "e.g. attack.n_poisons=100 attack.poison_ratio=null, or attack.n_poisons=null attack.poison_ratio=0.05.",
        )
    if poison_ratio is not None and not 0.0 <= poison_ratio < 1.0:
        raise ConfigError(
            "attack.poison_ratio", f"must be in [0, 1) (got {poison_ratio}).", "pass a fraction such as 0.05."
        )
    if n_poisons is not None and n_poisons < 0:
        raise ConfigError("attack.n_poisons", f"must be >= 0 (got {n_poisons}).", "pass a count such as 100.")


def poison_count(*, poison_ratio: float | None, n_poisons: int | None, n_train: int) -> int:
    """The number of poisons for a clean training set of ``n_train`` samples."""
    return n_poisons if n_poisons is not None else round(poison_ratio * n_train)
