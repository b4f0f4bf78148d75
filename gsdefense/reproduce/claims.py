"""Every claim the reproduction tests, in report order.

The entries live in ``claims_hong`` (H1–H3), ``claims_frogs`` (H4–H7) and ``claims_followups`` (L1, L2, S1, N1).
"""

from __future__ import annotations

from collections.abc import Sequence

from gsdefense.errors import ConfigError
from gsdefense.reproduce.claims_followups import L1, L2, N1, S1
from gsdefense.reproduce.claims_frogs import H4, H5, H6, H7
from gsdefense.reproduce.claims_hong import H1, H2, H3
from gsdefense.reproduce.spec import Claim

CLAIMS: tuple[Claim, ...] = (H1, H2, H3, H4, H5, H6, H7, L1, L2, S1, N1)
BY_ID = {claim.id: claim for claim in CLAIMS}


def select(ids: Sequence[str] | None) -> list[Claim]:
    """The claims named by ``ids`` (case-insensitive, report order), all of them for None or empty."""
    if not ids:
        return list(CLAIMS)
    wanted = {i.upper() for i in ids}
    unknown = sorted(wanted - set(BY_ID))
    if unknown:
        raise ConfigError("--claims", f"unknown claim id(s) {', '.join(unknown)}.", f"use some of {' '.join(BY_ID)}.")
    return [claim for claim in CLAIMS if claim.id in wanted]
