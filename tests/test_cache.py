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


def _reference_path(tmp_path, spec):
    from gsdefense.cache import json_path

    return json_path(tmp_path, "reference", spec)


BAD_JSON_ENTRIES = {
    "garbage bytes": lambda spec: "\x00{not json",
    "another spec": lambda spec: json.dumps({"spec_json": json.dumps({"a": 999}), "result": {"clean_acc": 0.1}}),
    "no spec": lambda spec: json.dumps({"result": {"clean_acc": 0.1}}),
    "not finite": lambda spec: json.dumps(
        {"spec_json": json.dumps(spec, sort_keys=True), "result": {"clean_acc": float("nan")}}
    ),  # fmt: skip
    "wrong shape": lambda spec: json.dumps([1, 2, 3]),
    "empty file": lambda spec: "",
}


def test_an_invalid_json_entry_is_recomputed_and_replaced(tmp_path, caplog):
    spec = {"a": 1}
    for name, content in BAD_JSON_ENTRIES.items():
        path = _reference_path(tmp_path, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content(spec))
        result, hit = cached_json(tmp_path, "reference", spec, lambda: {"clean_acc": 0.9})
        assert (result, hit) == ({"clean_acc": 0.9}, False), name
        assert "cannot be used" in caplog.text, name
        assert cached_json(tmp_path, "reference", spec, lambda: 1 / 0) == ({"clean_acc": 0.9}, True), name
        caplog.clear()


def test_a_check_can_reject_an_entry(tmp_path):
    def need_acc(result):
        if not isinstance(result.get("clean_acc"), float):
            raise ValueError("no clean_acc")

    cached_json(tmp_path, "reference", {"a": 1}, lambda: {"other": 1})
    result, hit = cached_json(tmp_path, "reference", {"a": 1}, lambda: {"clean_acc": 0.5}, check=need_acc)
    assert (result, hit) == ({"clean_acc": 0.5}, False)


def test_invalid_tensor_entries_are_recomputed(tmp_path):
    import torch

    from gsdefense.cache import save_tensor_entry

    spec = {"trigger": "t"}
    path = tmp_path / "trigger" / f"{cache_key('trigger', spec)}.pt"
    good = {"delta": torch.ones(2, 3)}
    bad_entries = {
        "garbage": lambda: path.write_bytes(b"\x00garbage"),
        "non-finite": lambda: save_tensor_entry(path, spec, {"delta": torch.full((2, 3), float("nan"))}),
        "another spec": lambda: save_tensor_entry(path, {"trigger": "other"}, good),
        "rejected by check": lambda: save_tensor_entry(path, spec, {"delta": torch.ones(5)}),
    }

    def right_shape(tensors):
        if tensors["delta"].shape != (2, 3):
            raise ValueError("wrong shape")

    for name, write in bad_entries.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write()
        tensors, hit = cached_tensors(tmp_path, "trigger", spec, lambda: good, check=right_shape)
        assert not hit and torch.equal(tensors["delta"], good["delta"]), name
        tensors, hit = cached_tensors(tmp_path, "trigger", spec, lambda: 1 / 0, check=right_shape)
        assert hit, name


def test_a_corrupt_reference_or_pretrained_model_is_retrained_not_a_crash(tmp_path):
    from gsdefense.run import run
    from tests.conftest import compose_cfg

    overrides = ["optimizer.epochs=1", "optimizer.batch_size=256", "telemetry.enabled=false"]
    retrain = ["scenario=retrain", "scenario.pretrain_epochs=1", "scenario.retrain_epochs=1"]
    first = run(compose_cfg(*overrides, *retrain), output_dir=tmp_path / "a")
    cache = tmp_path / "cache"
    for entry in [*cache.glob("reference/*.json"), *cache.glob("pretrained/*.pt")]:
        entry.write_bytes(b"\x00 corrupted")
    again = run(compose_cfg(*overrides, *retrain, "resume=false"), output_dir=tmp_path / "a")
    assert again["status"] == "ok"
    for key in ("clean_acc", "acc_ref", "acc_ref_dp_matched", "rad"):  # recomputed to the same numbers
        assert again[key] == first[key], key
