"""The shared cache computes each entry once, even with concurrent jobs."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

from gsdefense.cache import cache_key, cached_json, cached_tensors


def test_second_call_hits_and_different_spec_misses(tmp_path):
    calls = []
    compute = lambda: calls.append(1) or {"clean_acc": 0.9}  # noqa: E731
    assert cached_json(tmp_path, "reference", {"a": 1}, compute) == ({"clean_acc": 0.9}, False)
    assert cached_json(tmp_path, "reference", {"a": 1}, compute) == ({"clean_acc": 0.9}, True)
    assert cached_json(tmp_path, "reference", {"a": 2}, compute)[1] is False
    assert len(calls) == 2


def test_key_ignores_dict_order():
    assert cache_key("k", {"a": 1, "b": {"c": 2, "d": 3}}) == cache_key("k", {"b": {"d": 3, "c": 2}, "a": 1})


def _worker(cache_dir: str, log: str) -> None:
    def compute() -> dict:
        with open(log, "a") as fh:
            fh.write("computed\n")
        time.sleep(0.5)  # wide window for a race
        return {"clean_acc": 0.5}

    result, _ = cached_json(cache_dir, "reference", {"same": "spec"}, compute)
    assert result == {"clean_acc": 0.5}


def test_eight_concurrent_processes_compute_once_and_leave_one_valid_file(tmp_path):
    log = tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "c"), str(log))) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    assert log.read_text().count("computed") == 1
    entries = list(Path(tmp_path / "c" / "reference").glob("*.json"))
    assert len(entries) == 1
    assert json.loads(entries[0].read_text())["result"] == {"clean_acc": 0.5}
    assert not list(Path(tmp_path / "c" / "reference").glob("*.tmp"))


def test_tensor_cache_round_trip(tmp_path):
    import torch

    spec = {"trigger": "narcissus", "eps": 0.06}
    made = {"delta": torch.arange(6.0).reshape(2, 3)}
    first, hit = cached_tensors(tmp_path, "trigger", spec, lambda: made)
    assert not hit
    again, hit = cached_tensors(tmp_path, "trigger", spec, lambda: 1 / 0)
    assert hit and torch.equal(again["delta"], made["delta"])
