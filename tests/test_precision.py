"""``--precision fp32|bf16``: bf16 autocast in the networks, fp32 keys unchanged, never mixed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leakbench.diffusion.precision import resolve_precision
from leakbench.diffusion.unet import TimeEncoder, UNet
from leakbench.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device on this machine; the CPU path is tested")


def _harness(tmp_path, precision):
    from leakbench.harness import Harness

    return Harness.create(profile="smoke", cache_dir=tmp_path / "cache",
                          results=tmp_path / f"results-{precision}", progress=False,
                          precision=precision)


def _conv_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    """Record the dtype of every Conv2d output of ``model`` from now on."""
    seen: list[torch.dtype] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def _without_precision(spec):
    if not isinstance(spec, dict):
        return spec
    return {k: _without_precision(v) for k, v in spec.items() if k != "precision"}


def test_bad_precision_is_one_sentence(tmp_path):
    assert resolve_precision(None) == "fp32" and resolve_precision("BF16") == "bf16"
    with pytest.raises(UsageError, match=r"^Unknown precision 'fp16'; use fp32 \(the default\) "
                                         r"or bf16\.$"):
        _harness(tmp_path, "fp16")
    r = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/", "--precision", "fp16",
                        "--results", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")],
                       cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "Unknown precision 'fp16'; use fp32 (the default) or bf16." in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("net", [UNet(1, (16, 32)), TimeEncoder(1, (16, 32))],
                         ids=["unet", "classifier"])
def test_bf16_autocasts_the_forward_pass_and_returns_fp32(net):
    torch.manual_seed(0)
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 100, (4,))
    seen = _conv_dtypes(net)
    ref = net(x, t)
    assert set(seen) == {torch.float32}
    seen.clear()
    net.precision = "bf16"
    out = net(x, t)
    assert set(seen) == {torch.bfloat16}  # every convolution ran in bf16
    assert out.dtype == torch.float32
    assert not torch.equal(out, ref)  # bf16 changes the numbers, a little
    torch.testing.assert_close(out, ref, rtol=0.1, atol=0.05)


def test_precision_is_part_of_the_cache_keys_and_fp32_keys_are_unchanged(tmp_path, monkeypatch):
    """bf16 adds one field to every key; fp32 keys are exactly the keys without the field."""
    import leakbench.cache
    from baselines.cpsample import CPSample
    from baselines.ddim import DDIM

    specs: list[dict] = []
    real = leakbench.cache.content_key
    monkeypatch.setattr(leakbench.cache, "content_key",
                        lambda kind, spec: specs.append(spec) or real(kind, spec))
    ctx = {p: _harness(tmp_path, p).context("digits") for p in ("fp32", "bf16")}
    keys = {}
    for p, c in ctx.items():
        specs.clear()
        keys[p] = (c.target_key(DDIM()), c.target_key(CPSample()))
        target_spec = specs[0]
        assert ("precision" in target_spec) == (p == "bf16")
    assert keys["fp32"][0] != keys["bf16"][0] and keys["fp32"][1] != keys["bf16"][1]

    # Training and pretraining specs (they key the denoisers, the classifier, dpsgd, ambient).
    for name in ("training_spec", "pretraining_spec"):
        fp32, bf16 = getattr(ctx["fp32"], name)(), getattr(ctx["bf16"], name)()
        assert "precision" not in fp32 and bf16["precision"] == "bf16"
        assert _without_precision(bf16) == fp32
    assert ctx["fp32"].training_spec()["init"] == ctx["fp32"].pretraining_spec()
    assert "precision" in ctx["bf16"].training_spec()["init"]


def test_bf16_trains_and_samples_end_to_end_apart_from_fp32(tmp_path):
    """One cache: the bf16 run builds its own denoiser and samples (no fp32 artifact is reused),
    computes in bf16, and gives finite samples, noise predictions and metrics."""
    import numpy as np

    fp32 = _harness(tmp_path, "fp32")
    fp32.run_cell("digits", "ddim", "replication")
    bf16 = _harness(tmp_path, "bf16")
    f = bf16.run_cell("digits", "ddim", "loss_mia")
    assert all(np.isfinite(m.value) for m in f.metrics)
    assert f.info["precision"] == "bf16"
    assert "precision" not in fp32.run_cell("digits", "ddim", "loss_mia").info
    built = {e.kind for e in bf16.cache.events if e.status != "hit"}
    assert {"pretrained", "denoiser"} <= built
    assert not any(e.status == "hit" and e.kind in ("pretrained", "denoiser")
                   for e in bf16.cache.events)

    target = bf16.target("digits", "ddim").target
    samples = target.sample(16, seed=3)
    assert samples.dtype == torch.float32 and bool(samples.isfinite().all())
    seen = _conv_dtypes(target.released_model)
    x_t = torch.randn(4, *target.splits.image_shape)
    eps = target.predict_noise(x_t, torch.full((4,), 50))
    assert eps.dtype == torch.float32 and bool(eps.isfinite().all())
    assert seen and set(seen) == {torch.bfloat16}
    # The two denoisers were trained apart: different weights.
    w32 = fp32.context("digits").denoiser().conv_in.weight
    w16 = bf16.context("digits").denoiser().conv_in.weight
    assert w16.dtype == torch.float32 and not torch.equal(w32, w16)


def test_dpsgd_trains_in_fp32_under_bf16():
    """Opacus' per-sample gradients would be bf16 under autocast; clipping must see fp32."""
    from leakbench.diffusion.private import train_private_denoiser
    from leakbench.diffusion.schedule import make_schedule

    torch.manual_seed(0)
    net = UNet(1, (16, 32), precision="bf16")
    seen = _conv_dtypes(net)
    ema, stats = train_private_denoiser(
        net, torch.rand(32, 1, 8, 8) * 2 - 1, schedule=make_schedule("linear", 100), steps=2,
        batch_size=16, learning_rate=1e-3, ema_decay=0.9, seed=0, target_epsilon=10.0,
        target_delta=1e-5, max_grad_norm=1.0, progress=False)
    assert seen and set(seen) == {torch.float32}
    assert stats["epsilon"] <= 10.0 + 1e-6


@needs_cuda
def test_bf16_smoke_cell_on_cuda(tmp_path):
    import numpy as np

    from leakbench.harness import Harness

    h = Harness.create(profile="smoke", device="cuda", precision="bf16",
                       cache_dir=tmp_path / "c", results=tmp_path / "r", progress=False)
    for attack in ("replication", "loss_mia"):
        f = h.run_cell("digits", "cpsample", attack)
        assert all(np.isfinite(m.value) for m in f.metrics), attack
