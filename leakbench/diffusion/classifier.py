"""CPSample's classifier: memorise random binary labels of the members (paper 001, Sec. 3.1, App. C).

p_φ(y | x_t, t) is a ``TimeEncoder`` (the U-Net's encoder half: timestep embedding,
downsampling residual blocks, a middle block, GroupNorm + SiLU + pooling, a linear
head) trained with EMA on the members noised to a uniformly drawn t.  Every member
gets a fixed Bernoulli(0.5) label.  Once the members' cross-entropy is below the
target (or the step budget is spent), members the classifier still gets wrong are
relabelled to one common label and training continues (the paper's treatment of
duplicates, Sec. 3.1).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from leakbench.diffusion.schedule import NoiseSchedule
from leakbench.diffusion.training import ema_update

COMMON_LABEL = 0  # the label relabelled members share


def random_labels(n: int, seed: int) -> torch.Tensor:
    """B ∈ {0, 1}^n with B_i ~ Bernoulli(0.5), fixed by ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.bernoulli(torch.full((n,), 0.5), generator=gen).long()


def classifier_channels(unet_channels: tuple[int, ...], width: int) -> tuple[int, ...]:
    """The U-Net's channel multipliers at base ``width``: (32, 64, 64) at 16 -> (16, 32, 32)."""
    return tuple(max(1, c * width // unet_channels[0]) for c in unet_channels)


@torch.no_grad()
def member_loss(classifier: nn.Module, x0: torch.Tensor, labels: torch.Tensor,
                schedule: NoiseSchedule, *, draws: int, seed: int, batch_size: int = 512
                ) -> tuple[float, float]:
    """(cross-entropy, accuracy) on the members at uniformly drawn t, ``draws`` fixed draws each."""
    gen = torch.Generator().manual_seed(int(seed))
    x0 = x0.repeat(draws, 1, 1, 1)
    y = labels.repeat(draws)
    t = torch.randint(0, schedule.num_timesteps, (len(x0),), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    return _loss_and_accuracy(classifier, x0, y, t, eps, schedule, batch_size)


@torch.no_grad()
def clean_predictions(classifier: nn.Module, x0: torch.Tensor, batch_size: int = 512
                      ) -> torch.Tensor:
    """argmax_y p_φ(y | x_0, t=0) for every member."""
    device = next(classifier.parameters()).device
    out = []
    for i in range(0, len(x0), batch_size):
        x = x0[i:i + batch_size].to(device)
        t = torch.zeros(len(x), dtype=torch.long, device=device)
        out.append(classifier(x, t).argmax(dim=1).cpu())
    return torch.cat(out)


def _loss_and_accuracy(classifier, x0, y, t, eps, schedule, batch_size):
    device = next(classifier.parameters()).device
    total, correct = 0.0, 0
    for i in range(0, len(x0), batch_size):
        sl = slice(i, i + batch_size)
        x_t = schedule.add_noise(x0[sl], t[sl], eps[sl]).to(device)
        logits = classifier(x_t, t[sl].to(device)).cpu()
        total += float(F.cross_entropy(logits, y[sl], reduction="sum"))
        correct += int((logits.argmax(dim=1) == y[sl]).sum())
    return total / len(x0), correct / len(x0)


def train_classifier(
    classifier: nn.Module,
    members: torch.Tensor,
    labels: torch.Tensor,
    *,
    schedule: NoiseSchedule,
    steps: int,
    loss_target: float,
    batch_size: int,
    learning_rate: float,
    ema_decay: float,
    seed: int,
    eval_every: int = 100,
    eval_draws: int = 4,
    relabel_steps: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, torch.Tensor, dict]:
    """Fit p_φ(y | x_t, t) to ``labels``; return (EMA classifier, final labels, stats).

    Phase 1 trains until the EMA classifier's members cross-entropy (uniform t,
    ``eval_draws`` fixed noise draws per member) is below ``loss_target``, or for
    ``steps`` steps.  Members it then misclassifies at t = 0 get ``COMMON_LABEL``,
    and phase 2 trains for up to ``relabel_steps`` more (default ``steps // 4``),
    again stopping at the target.
    """
    gen = torch.Generator().manual_seed(int(seed))
    classifier = classifier.to(device).train()
    ema = copy.deepcopy(classifier).eval().requires_grad_(False)
    opt = torch.optim.Adam(classifier.parameters(), lr=learning_rate)
    x0_all, labels = members.to(device), labels.clone()
    relabel_steps = steps // 4 if relabel_steps is None else relabel_steps
    t0 = time.perf_counter()
    step = 0

    def evaluate():
        return member_loss(ema, members, labels, schedule, draws=eval_draws, seed=seed + 1)

    def run_phase(budget: int, desc: str) -> tuple[float, float]:
        nonlocal step
        loss, acc = evaluate()
        bar = tqdm(total=budget, desc=desc, unit="step", disable=not progress, leave=False)
        for i in range(budget):
            if loss < loss_target:
                break
            # Noise a batch of members to uniform t: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε.
            idx = torch.randint(0, len(x0_all), (min(batch_size, len(x0_all)),), generator=gen)
            t = torch.randint(0, schedule.num_timesteps, (len(idx),), generator=gen)
            eps = torch.randn((len(idx), *x0_all.shape[1:]), generator=gen)
            x_t = schedule.add_noise(x0_all[idx.to(device)], t.to(device), eps.to(device))

            # Cross-entropy against the members' fixed labels; EMA with warm-up.
            batch_loss = F.cross_entropy(classifier(x_t, t.to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            ema_update(ema, classifier, min(ema_decay, (1 + step) / (10 + step)))
            step += 1
            bar.update(1)
            if (i + 1) % eval_every == 0 or i + 1 == budget:
                loss, acc = evaluate()
                bar.set_postfix(member_ce=f"{loss:.3f}", acc=f"{acc:.2f}")
        bar.close()
        return loss, acc

    # Phase 1: memorise the random labels.
    phase1_loss, phase1_acc = run_phase(steps, "training CPSample classifier")
    phase1_steps = step

    # Relabel members still misclassified at t = 0 to one common label, and go on.
    wrong = clean_predictions(ema, members) != labels
    labels[wrong] = COMMON_LABEL
    loss, acc = phase1_loss, phase1_acc
    if wrong.any() and relabel_steps > 0:
        loss, acc = run_phase(relabel_steps, "training CPSample classifier (relabelled)")

    clean_acc = float((clean_predictions(ema, members) == labels).float().mean())
    stats = {
        "train_seconds": time.perf_counter() - t0,
        "steps": step,
        "phase1_steps": phase1_steps,
        "phase1_loss": phase1_loss,
        "relabelled": int(wrong.sum()),
        "final_loss": loss,
        "final_accuracy": acc,
        "clean_accuracy": clean_acc,
        "reached_target": bool(loss < loss_target),
    }
    return ema.cpu(), labels, stats
