"""Cost of a training step of the retraining defenses against the plain denoiser (``-m perf``).

    OMP_NUM_THREADS=1 pytest benchmarks/perf/test_training_defenses_perf.py -m perf -s

The issue asks for at most 3× the plain step at the same step count.  The three
trainers run interleaved, round after round, so a busy shared machine slows them alike.
"""

from __future__ import annotations

import functools
import statistics
import warnings

import torch

from leakbench.config import get_profile
from leakbench.diffusion.ambient import ambient_loss, member_masks
from leakbench.diffusion.private import train_private_denoiser
from leakbench.diffusion.schedule import make_schedule
from leakbench.diffusion.training import train_denoiser
from leakbench.diffusion.unet import UNet

P = get_profile("default")
STEPS, ROUNDS = 30, 3


def _seconds_per_step() -> dict[str, float]:
    data = torch.rand(P.n_members, 1, P.image_size, P.image_size) * 2 - 1
    sched = make_schedule(P.schedule, P.num_timesteps)
    common = dict(schedule=sched, steps=STEPS, batch_size=P.batch_size,
                  learning_rate=P.learning_rate, ema_decay=P.ema_decay, seed=0, progress=False)
    A = member_masks(len(data), (P.image_size, P.image_size), 0.2, seed=0)

    def plain():
        return train_denoiser(UNet(1, P.unet_channels, P.unet_attention), data, **common)[1][
            "train_seconds"]

    def ambient():
        net = UNet(2, P.unet_channels, P.unet_attention, out_channels=1)
        return train_denoiser(net, torch.cat([A * data, A], dim=1), **common,
                              loss_fn=functools.partial(ambient_loss, delta=0.1))[1]["train_seconds"]

    def dpsgd():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stats = train_private_denoiser(UNet(1, P.unet_channels, P.unet_attention), data,
                                           **common, target_epsilon=10.0, target_delta=1e-5,
                                           max_grad_norm=1.0)[1]
        return stats["train_seconds"] - stats["calibration_seconds"]

    runs = {"ddim": plain, "ambient": ambient, "dpsgd": dpsgd}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            torch.manual_seed(0)
            times[name].append(run() / STEPS)
    return {k: statistics.median(v) for k, v in times.items()}


def test_retraining_defenses_cost_at_most_3x_a_plain_step(benchmark):
    per_step = benchmark.pedantic(_seconds_per_step, rounds=1, iterations=1)
    ratios = {k: v / per_step["ddim"] for k, v in per_step.items()}
    benchmark.extra_info.update({f"{k}_seconds_per_step": v for k, v in per_step.items()})
    benchmark.extra_info.update({f"{k}_ratio": v for k, v in ratios.items()})
    print("\n" + "\n".join(f"{k:8s} {per_step[k] * 1e3:7.1f} ms/step  {ratios[k]:.2f}× ddim"
                           for k in per_step))
    assert ratios["ambient"] <= 3.0
    assert ratios["dpsgd"] <= 3.0
