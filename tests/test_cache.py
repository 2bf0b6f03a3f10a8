from __future__ import annotations

import multiprocessing as mp

import torch

from leakbench.cache import ArtifactCache, content_key


def test_content_key_depends_on_every_input():
    a = content_key("denoiser", {"steps": 10, "seed": 0})
    assert a == content_key("denoiser", {"seed": 0, "steps": 10})  # order does not matter
    assert a != content_key("denoiser", {"steps": 11, "seed": 0})
    assert a != content_key("classifier", {"steps": 10, "seed": 0})


def test_build_once_then_hit(tmp_path):
    cache = ArtifactCache(tmp_path)
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(5.0), "info": {"seconds": 1.5}}

    first = cache.get_or_build("thing", {"x": 1}, build)
    second = cache.get_or_build("thing", {"x": 1}, build)
    assert len(calls) == 1
    assert torch.equal(first["w"], second["w"]) and second["info"]["seconds"] == 1.5
    assert [e.status for e in cache.events] == ["built", "hit"]
    # the config is saved beside the artifact
    payload, meta = cache.paths("thing", content_key("thing", {"x": 1}))
    assert payload.exists() and '"x": 1' in meta.read_text()
    assert not list(tmp_path.rglob("*.tmp"))


def test_corrupt_entry_is_rebuilt_never_used(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.get_or_build("thing", {"x": 1}, lambda: {"w": torch.ones(100)})
    payload, _ = cache.paths("thing", content_key("thing", {"x": 1}))
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip bytes in the middle of the tensor data
    payload.write_bytes(bytes(data))
    out = cache.get_or_build("thing", {"x": 1}, lambda: {"w": torch.full((100,), 2.0)})
    assert torch.equal(out["w"], torch.full((100,), 2.0))
    assert cache.events[-1].status.startswith("rebuilt")
    assert cache.load("thing", content_key("thing", {"x": 1}))[1] == "hit"


def test_payload_without_metadata_is_not_read(tmp_path):
    cache = ArtifactCache(tmp_path)
    key = content_key("thing", {"x": 2})
    payload, meta = cache.paths("thing", key)
    payload.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(3)}, payload)  # as if killed before the metadata was written
    assert cache.load("thing", key) == (None, "missing")


def _build_in_process(root, counter_path):
    cache = ArtifactCache(root)

    def build():
        import time

        with open(counter_path, "a") as f:
            f.write("built\n")
        time.sleep(0.5)
        return {"w": torch.ones(3)}

    cache.get_or_build("shared", {"k": 1}, build)


def test_two_processes_build_once(tmp_path):
    counter = tmp_path / "count.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_build_in_process, args=(tmp_path / "c", counter)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert counter.read_text().count("built") == 1
