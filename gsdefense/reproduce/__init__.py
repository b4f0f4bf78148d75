"""Reproduce the papers' claims: ``python -m gsdefense.reproduce`` runs each claim's sweeps through ``launch.py``,
tests them (``stats``, ``checks``) and writes a verdict table with a figure per claim (``report``).

Modules: ``spec`` (Part, Claim), ``claims`` (the registry; entries in ``claims_hong`` and ``claims_followups``),
``checks`` (arms, tests, preconditions), ``stats`` (the tests and the verdict rule), ``evidence`` (per-run values
derived from a run's files), ``runner`` (the sweep commands), ``evaluate`` (verdicts from runs), ``figures``,
``report``.
"""
