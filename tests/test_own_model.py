"""Audit your own model: a diffusers model trained outside leakbench, on a folder of PNGs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDPMScheduler  # noqa: E402

from leakbench.errors import UsageError  # noqa: E402
from leakbench.harness import Harness  # noqa: E402
from tests.test_diffusers import tiny_unet  # noqa: E402
from tests.test_folder import digits_as_pngs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_diffusers_model(images: torch.Tensor, folder: Path, *, steps: int, seed: int = 0,
                          channels: int = 1) -> Path:
    """A plain diffusers training loop (DDPMScheduler, ε-MSE, Adam), saved with save_pretrained."""
    torch.manual_seed(seed)
    unet = tiny_unet(channels=channels, size=images.shape[-1], seed=seed).train().requires_grad_(True)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    for _ in range(steps):
        x0 = images[torch.randint(0, len(images), (min(32, len(images)),))]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (len(x0),))
        loss = (unet(scheduler.add_noise(x0, noise, t), t).sample - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.save_pretrained(folder)
    scheduler.save_pretrained(folder)
    return folder


def members_tensor(folder: Path) -> torch.Tensor:
    from leakbench.data.sources import Folder

    raw = Folder(str(folder)).load(8)
    members = torch.from_numpy(raw.images[raw.assigned["members"]]).permute(0, 3, 1, 2)
    return members * 2 - 1


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """digits as PNGs in members/ and holdout/, and a small UNet2DModel trained on members/."""
    tmp = tmp_path_factory.mktemp("own")
    data = tmp / "scans"
    digits_as_pngs(data / "members", 64)
    digits_as_pngs(data / "holdout", 64, start=64)
    model = train_diffusers_model(members_tensor(data), tmp / "model", steps=300)
    return data, model


@pytest.mark.slow
def test_benchmark_runs_every_cell_on_a_model_leakbench_did_not_train(own_model, tmp_path):
    data, model = own_model
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", "--model", str(model),
         "--dataset", f"folder:{data}", "--defense", "ddim,cpsample",
         "--attack", "replication,loss_mia,fid", "--profile", "smoke", "--no-report", "-q",
         "--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path / "results")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lb = subprocess.run([sys.executable, "-m", "leakbench.cli", "leaderboard", "--results",
                         str(tmp_path / "results"), "--format", "json"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    rows = json.loads(lb.stdout)
    cells = {(row["defense"], row["attack"]) for row in rows}
    for defense in ("ddim", "cpsample"):
        for attack in ("replication", "loss_mia", "fid"):
            assert (defense, attack) in cells, f"no result for {defense} × {attack}"


def test_the_model_is_the_target_and_its_files_key_the_cache(own_model, tmp_path):
    data, model = own_model
    h = Harness.create(profile="smoke", cache_dir=tmp_path / "c", results=tmp_path / "r",
                       model=model, progress=False)
    ctx = h.context(f"folder:{data}")
    assert ctx.schedule.num_timesteps == 1000 and ctx.splits.canary is None
    assert len(ctx.splits.members) == 64 and ctx.splits.image_shape == (1, 8, 8)
    target = h.target(f"folder:{data}", "ddim").target
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    torch.testing.assert_close(target.predict_noise(x, t), ctx.external.model.unet(x, t).sample)
    trained = Harness.create(profile="smoke", cache_dir=tmp_path / "c", results=tmp_path / "r",
                             progress=False)
    assert trained.context(f"folder:{data}").training_spec() != ctx.training_spec()


def test_training_time_defenses_and_channel_mismatch_are_one_sentence(own_model, tmp_path):
    data, model = own_model
    h = Harness.create(profile="smoke", cache_dir=tmp_path / "c", results=tmp_path / "r",
                       model=model, progress=False)
    with pytest.raises(UsageError, match="'dpsgd' trains its own denoiser.*--model"):
        h.target(f"folder:{data}", "dpsgd")
    rgb = tmp_path / "rgb"
    tiny_unet(channels=3).save_pretrained(rgb)
    DDPMScheduler().save_pretrained(rgb)
    h = Harness.create(profile="smoke", cache_dir=tmp_path / "c", results=tmp_path / "r",
                       model=rgb, progress=False)
    with pytest.raises(UsageError, match="makes 3-channel images but dataset .* is grey") as exc:
        h.target(f"folder:{data}", "ddim")
    assert "\n" not in str(exc.value)


@pytest.mark.slow
def test_a_bad_model_folder_stops_the_run_and_loses_nothing_stored(own_model, tmp_path):
    """A benchmark run given a broken --model stops with its one sentence; the results store
    keeps every row an earlier run on a good model wrote."""
    from tests.test_diffusers import _bad_prediction, _no_config

    data, model = own_model
    h = Harness.create(profile="smoke", cache_dir=tmp_path / "c", results=tmp_path / "r",
                       model=model, progress=False)
    h.run_cell(f"folder:{data}", "ddim", "replication")
    h.finish(reference=False)
    before = h.store.rows()
    assert before
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for make, message in [(_no_config, "is not a diffusers model folder"),
                          (_bad_prediction, "prediction_type 'flow' is not supported")]:
        bad = tmp_path / make.__name__
        make(bad)
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "benchmarks/", "--model", str(bad), "--dataset",
             f"folder:{data}", "--defense", "ddim", "--attack", "replication", "--profile",
             "smoke", "--no-report", "-q", "--cache-dir", str(tmp_path / "c"), "--results",
             str(tmp_path / "r")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode != 0
        assert message in r.stdout + r.stderr
        from leakbench.results import ResultsStore

        assert ResultsStore(tmp_path / "r").rows() == before
