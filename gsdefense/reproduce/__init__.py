"""Reproduce the papers' claims: ``python -m gsdefense.reproduce`` runs each claim's sweeps through ``launch.py``,
tests them and writes a verdict report per scale (``docs/reproduction`` embedded, ``docs/reproduction-paper``).

Modules: ``spec`` (Part, Claim), ``claims`` (the registry; entries in ``claims_hong``, ``claims_frogs`` and
``claims_followups``), ``arms`` (which runs form an arm; levels), ``checks`` (the check kinds), ``preconditions``,
``stats`` (the tests), ``verdicts`` (interval → verdict, Holm, a claim's verdict), ``evidence`` (per-run values
derived from a run's files), ``findings`` (text the runs give beside the checks), ``datacheck`` (each claim's data,
before any sweep), ``runner`` (the sweep commands), ``run`` (the command's flow), ``evaluate``, ``setup`` (Setup
from the runs' configs), ``report``/``report_text``/``tables``/``figures`` (the report), ``original`` and
``original_cli`` (gsdefense beside the original code's released results).
"""
