"""How close training and sampling come to the machine's matmul peak, in fp32 and bf16.

    pytest benchmarks/perf/test_machine_limit.py -m perf -s [--device cuda]

The peak is the best of a few large square matmuls (2n³ FLOPs each) in fp32 and in
bf16.  For one training step (DDPM loss forward and backward, Adam, EMA) and one
DDIM step (one U-Net forward and the update) at the default and paper profiles, the
U-Net's FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
convolutions, forward and backward: what the peak measures) and divided by the step's
fastest time of a few rounds (on a shared machine the least disturbed, as for the peak;
pytest-benchmark's table has the medians).  That fraction of the same precision's peak is the number to raise.  The
paper profile runs at a small batch (``PAPER_BATCH``) on the CPU: its FLOPs per image are
the paper U-Net's, only fewer images.  Weights are untrained (the cost does not depend
on them); the thread count is torch's (``OMP_NUM_THREADS``), the same for the peak and
the steps.  A table is printed at the end of the module (``-s``).
"""

from __future__ import annotations

import copy
import time

import pytest
import torch

from leakbench.config import get_profile
from leakbench.diffusion.sampling import ddim_sample
from leakbench.diffusion.schedule import make_schedule
from leakbench.diffusion.training import ddpm_loss, ema_update
from leakbench.diffusion.unet import UNet

PRECISIONS = ("fp32", "bf16")
PROFILES = ("default", "paper")
PAPER_BATCH = 8  # the paper profile's batch on a CPU; its own (128 / 500) on a GPU
ROUNDS = {"default": 7, "paper": 5}


@pytest.fixture(scope="module")
def device(request) -> str:
    from leakbench.context import resolve_device

    return resolve_device(request.config.getoption("--device"))


@pytest.fixture(scope="module")
def table(device):
    """Rows filled by the tests below; printed as one table when the module is done."""
    rows: dict = {"peak": {}, "steps": {}}
    yield rows
    print("\n" + render_table(rows, device))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(precision: str, device: str, *, repeats: int = 10) -> float:
    """FLOP/s of the fastest square matmul (2n³ FLOPs) of ``repeats`` per size, in ``precision``.

    Sizes 512-2048 on a CPU, 4096-8192 on CUDA; the operands are made in the dtype first,
    so the peak is the matmul's alone (a network under autocast also pays the casts).
    On a shared machine the fastest repeat is the one least disturbed by other work.
    """
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    best = 0.0
    for n in (4096, 8192) if device.startswith("cuda") else (512, 1024, 2048):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up
        _sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def _peak(table, precision: str, device: str) -> float:
    if precision not in table["peak"]:
        table["peak"][precision] = matmul_peak(precision, device)
    return table["peak"][precision]


def _batch(profile, phase: str, device: str) -> int:
    if profile.name == "paper" and not device.startswith("cuda"):
        return PAPER_BATCH
    return profile.batch_size if phase == "train" else profile.sample_batch_size


def _step(profile, phase: str, precision: str, device: str):
    """(one step as a no-argument function, its batch size) for ``phase`` 'train' or 'ddim'."""
    torch.manual_seed(0)
    model = UNet(1, profile.unet_channels, profile.unet_attention, precision=precision).to(device)
    sched = make_schedule(profile.schedule, profile.num_timesteps)
    n = _batch(profile, phase, device)
    x = torch.rand(n, 1, profile.image_size, profile.image_size, device=device) * 2 - 1
    if phase == "ddim":
        model.eval().requires_grad_(False)
        t = profile.num_timesteps // 2

        def step():
            ddim_sample(model, x, [t], schedule=sched)  # one ε̂ and one update
            _sync(device)

        return step, n

    # The training loop's step (training.train_denoiser): loss, backward, Adam, EMA.
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=profile.learning_rate)
    gen = torch.Generator().manual_seed(0)

    def step():
        loss = ddpm_loss(model, x, sched, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, model, profile.ema_decay)
        _sync(device)

    return step, n


def count_flops(step) -> int:
    """Matmul and convolution FLOPs of one call of ``step`` (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_matmul_peak(benchmark, table, device, precision):
    peak = benchmark.pedantic(matmul_peak, args=(precision, device), rounds=1, iterations=1)
    table["peak"][precision] = peak
    benchmark.extra_info.update({"flops_per_second": peak, "threads": torch.get_num_threads()})
    assert peak > 0


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("phase", ["train", "ddim"])
@pytest.mark.parametrize("profile_name", PROFILES)
def test_fraction_of_peak(benchmark, table, device, profile_name, phase, precision):
    profile = get_profile(profile_name)
    step, n = _step(profile, phase, precision, device)
    flops = count_flops(step)  # also the warm-up round
    times: list[float] = []

    def timed():
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)

    benchmark.pedantic(timed, rounds=ROUNDS[profile_name], iterations=1, warmup_rounds=1)
    seconds = min(times[-ROUNDS[profile_name]:])  # least disturbed, as the peak's
    achieved = flops / seconds
    fraction = achieved / _peak(table, precision, device)
    table["steps"][(profile_name, phase, precision)] = {
        "batch": n, "flops": flops, "seconds": seconds, "achieved": achieved, "fraction": fraction}
    benchmark.extra_info.update({"batch": n, "flops": flops, "flops_per_second": achieved,
                                 "fraction_of_peak": fraction,
                                 "threads": torch.get_num_threads()})
    assert flops > 0 and 0 < fraction


def render_table(rows: dict, device: str) -> str:
    """The peak, then one line per (profile, step): FLOPs, time, achieved, fraction, bf16 speed-up."""
    peak = rows["peak"]
    lines = [f"machine limit on {device} ({torch.get_num_threads()} thread(s)): matmul peak "
             + ", ".join(f"{p} {peak[p] / 1e9:,.0f} GFLOP/s" for p in PRECISIONS if p in peak)]
    head = (f"{'profile':<8} {'step':<6} {'batch':>5} {'GFLOP':>8}"
            + "".join(f" {p + ' s':>9} {p + ' GFLOP/s':>13} {'% peak':>7}" for p in PRECISIONS)
            + f" {'bf16 speed-up':>13}")
    lines += [head, "-" * len(head)]
    for profile in PROFILES:
        for phase in ("train", "ddim"):
            cells = {p: rows["steps"].get((profile, phase, p)) for p in PRECISIONS}
            first = next((c for c in cells.values() if c), None)
            if first is None:
                continue
            line = f"{profile:<8} {phase:<6} {first['batch']:>5} {first['flops'] / 1e9:>8.2f}"
            for p in PRECISIONS:
                c = cells[p]
                line += (f" {c['seconds']:>9.4f} {c['achieved'] / 1e9:>13.1f} "
                         f"{100 * c['fraction']:>6.1f}%" if c else f" {'-':>9} {'-':>13} {'-':>7}")
            if cells["fp32"] and cells["bf16"]:
                line += f" {cells['fp32']['seconds'] / cells['bf16']['seconds']:>12.2f}×"
            lines.append(line)
    return "\n".join(lines)
