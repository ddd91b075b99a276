"""The measurement layer: thread count, interleaved timing, the busy-machine check, machine ids, the results store,
and the cache's fingerprints."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings

import pandas as pd
import pytest
import torch

from ufkit import UfkitError
from ufkit.cache import fingerprint, fingerprint_texts, load_or_make
from ufkit.measure import (BusyMachineWarning, ResultsStore, drift_scale, machine_id, machine_info, num_threads,
                           summarize, time_calls)
from ufkit.measure.machine import isa_description


def test_num_threads_restores_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        with num_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(UfkitError, match="threads must be a positive integer"):
        with num_threads(0):
            pass


def test_time_calls_interleaves_and_summarizes():
    order = []
    fns = {name: (lambda x, name=name: order.append((name, x))) for name in ("a", "b", "c")}
    t = time_calls(fns, [0, 1, 2], n_warmup=0, rounds=2)
    assert {k: len(v) for k, v in t.times_ms.items()} == {"a": 6, "b": 6, "c": 6}
    # rotating order: input 0 starts with a, input 1 with b, input 2 with c
    assert [n for n, _ in order[:9]] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    row = summarize([1.0, 2.0, 3.0, 4.0], batch_size=2)
    assert row["latency_ms_mean"] == 2.5 and row["latency_ms_min"] == 1.0 and row["n_calls"] == 4
    assert row["throughput_seq_per_s"] == pytest.approx(2 * 1000 / 2.5)
    with pytest.raises(UfkitError, match="inputs is empty"):
        time_calls(fns, [])
    with pytest.raises(UfkitError, match="rounds"):
        time_calls(fns, [0], rounds=0)


def test_drift_scale():
    assert list(drift_scale([10.0, 20.0, 15.0])) == [1.5, 0.75, 1.0]


def test_a_busy_machine_is_flagged():
    """Two processes that burn CPU while we time: the result carries busy=True and a warning, after a retry."""
    burn = "import time\nt = time.time()\nwhile time.time() - t < 20: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
    try:
        time.sleep(0.5)
        with pytest.warns(BusyMachineWarning, match="other processes took"):
            t = time_calls({"sleep": lambda _: time.sleep(0.05)}, list(range(8)), n_warmup=0, retries=1,
                           max_other_cores=0.5)
    finally:
        for p in procs:
            p.kill()
    assert t.busy and t.attempts == 2 and t.other_cores > 0.5
    assert t.load_columns()["busy"] is True


def test_machine_id_from_row_columns():
    info = machine_info(threads=2)
    assert info["machine_id"] == machine_id(info) and len(info["machine_id"]) == 12
    other = {**info, "cpu_flags": "avx2,fma"} if "avx512f" in info["cpu_flags"] else {**info, "cpu_flags": "avx2,fma,avx512f"}
    assert machine_id(other) != info["machine_id"]
    assert machine_id({**info, "threads": 1}) != info["machine_id"]
    assert machine_id({**info, "date": "another day", "platform": "x"}) == info["machine_id"]
    assert "AVX2" in isa_description("avx2,fma") and "no AVX-512" in isa_description("avx2,fma")
    assert "AMX" in isa_description("avx2,avx512f,avx512_vnni,avx512_bf16,amx_tile,amx_int8,amx_bf16")


def test_results_of_another_machine_or_model_are_not_reused(tmp_path):
    store = ResultsStore(tmp_path)
    here = machine_info(threads=2)
    elsewhere = {**here, "cpu_model": "Some Other CPU", "cpu_flags": "avx2,fma"}
    elsewhere["machine_id"] = machine_id(elsewhere)
    store.append("t", pd.DataFrame([{"latency_ms_mean": 99.0, "model_id": "m1", **elsewhere}]))
    assert store.read("t", machine="current").empty and len(store.read("t")) == 1
    calls = []

    def measure():
        calls.append(1)
        return pd.DataFrame([{"latency_ms_mean": 1.0 + len(calls), **machine_info(threads=2)}])

    first = store.load_or_measure("t", measure, model_id="m1")
    assert len(calls) == 1 and first["latency_ms_mean"].iloc[0] == 2.0   # another machine's row is not reused
    again = store.load_or_measure("t", measure, model_id="m1")
    assert len(calls) == 1 and again["latency_ms_mean"].iloc[0] == 2.0   # this machine, same model: reused
    other = store.load_or_measure("t", measure, model_id="m2")
    assert len(calls) == 2 and other["model_id"].iloc[0] == "m2"         # another model: measured again
    table = store.read("t")
    assert len(table) == 3 and set(table["machine_id"]) == {here["machine_id"], elsewhere["machine_id"]}
    with pytest.raises(UfkitError, match="table must be"):
        store.read("../x")


def test_cache_reuses_only_for_the_same_inputs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, weights in ((a, b"one"), (b, b"two")):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(weights)
    assert fingerprint(a) != fingerprint(b)
    (tmp_path / "a2").mkdir()
    for f in a.iterdir():
        (tmp_path / "a2" / f.name).write_bytes(f.read_bytes())
    assert fingerprint(tmp_path / "a2") == fingerprint(a)  # content, not place or time
    assert fingerprint_texts(["x", "y"]) != fingerprint_texts(["x", "y"], [0, 1])
    made = []

    def make(tag):
        def run():
            made.append(tag)
            return tag, {"steps": 1}
        return run

    save = lambda obj, folder: (folder / "out.txt").write_text(obj)  # noqa: E731
    load = lambda folder: (folder / "out.txt").read_text()  # noqa: E731
    out = tmp_path / "cache"
    obj, info = load_or_make(out, {"model_id": fingerprint(a)}, make("A"), save=save, load=load)
    assert obj == "A" and info["recipe"] == {"model_id": fingerprint(a)} and "machine" in info
    obj, _ = load_or_make(out, {"model_id": fingerprint(a)}, make("A again"), save=save, load=load)
    assert obj == "A" and made == ["A"]                                  # same model files: loaded
    obj, _ = load_or_make(out, {"model_id": fingerprint(b)}, make("B"), save=save, load=load)
    assert obj == "B" and made == ["A", "B"]                             # other model files: made again


def test_interrupted_cache_write_leaves_nothing(tmp_path):
    def make():
        return "x", {}

    def save(obj, folder):
        (folder / "half.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_or_make(tmp_path / "c", {"k": 1}, make, save=save, load=lambda f: None)
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.tmp-*"))


def test_store_matches_numbers_as_numbers(tmp_path):
    store = ResultsStore(tmp_path)
    store.append("t", pd.DataFrame([{"batch_size": 512.0, "name": "a", **machine_info(threads=2)}]))
    assert len(store.read("t", batch_size=512)) == 1 and len(store.read("t", name="a")) == 1
    assert store.read("t", batch_size=64).empty
