"""A denoiser conditioned on an embedding, ε_θ(x_t, t, c), for DP-RDM (paper 002).

``ConditionalUNet`` is the suite's U-Net with the conditioning projected into the time
embedding, which every residual block turns into a per-channel shift (FiLM's shift; as
class and CLIP-embedding conditioning enter DDPM U-Nets in ADM and RDM).  A learned
``null`` embedding stands for c = None; training drops the condition with probability
``p_uncond`` so that "no retrieval" is a valid input.  The projection starts at zero, so
a model initialised from the public checkpoint begins as that unconditional model.

Training (``conditional_denoising_loss``) follows paper 002's recipe on public data: each
public image is conditioned on the mean of its k nearest *other* public images' embeddings
plus N(0, σ²I) with σ ~ U[0, σ_max], so the model learns to use a retrieved aggregate and to
tolerate the noise the private mechanism will add.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from leakbench.diffusion.schedule import NoiseSchedule
from leakbench.diffusion.unet import UNet


class ConditionalUNet(UNet):
    """``model(x_t, t, c) -> ε̂`` with c (N, d) or None (the learned null condition)."""

    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (32, 64, 64),
                 attention: bool = False, dropout: float = 0.0, cond_dim: int = 16,
                 precision: str = "fp32"):
        super().__init__(in_channels, channels, attention, dropout, precision=precision)
        self.config = {**self.config, "cond_dim": cond_dim}
        emb_dim = 4 * channels[0]
        self.cond = nn.Linear(cond_dim, emb_dim)
        nn.init.zeros_(self.cond.weight)
        nn.init.zeros_(self.cond.bias)
        self.null = nn.Parameter(torch.zeros(cond_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None
                ) -> torch.Tensor:
        if c is None:
            c = self.null.expand(len(x), -1)
        return self.denoise(x, self.time(t) + self.cond(c.to(x.device, torch.float32)))


def conditional_denoising_loss(model: ConditionalUNet, x0: torch.Tensor, schedule: NoiseSchedule,
                               generator: torch.Generator, *, extra: torch.Tensor,
                               sigma_max: float, p_uncond: float) -> torch.Tensor:
    """‖ε − ε_θ(x_t, t, c)‖² with c = (neighbour mean) + N(0, σ²I), σ ~ U[0, σ_max] per image,
    and c = null with probability ``p_uncond``."""
    n = x0.shape[0]
    t = torch.randint(0, schedule.num_timesteps, (n,), generator=generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    sigma = sigma_max * torch.rand(n, 1, generator=generator)
    c = extra.cpu() + sigma * torch.randn(extra.shape, generator=generator)
    drop = torch.rand(n, 1, generator=generator) < p_uncond
    # Dropped rows take the learned null vector itself, so its gradient flows.
    c = torch.where(drop.to(x0.device), model.null.expand_as(c), c.to(x0.device))
    x_t = schedule.add_noise(x0, t, eps)
    return (model(x_t, t, c) - eps).pow(2).mean()


P_UNCOND = 0.1  # conditioning dropout (classifier-free guidance's usual 10 %)


def conditional_spec(ctx, *, k: int, sigma_max: float) -> dict:
    """What determines the public conditional denoiser: the public checkpoint, the encoder,
    k, σ_max and the optimisation; nothing about the members."""
    from leakbench.errors import UsageError
    from leakbench.retrieval import encoder_spec

    init = ctx.pretraining_spec()
    if init is None:
        raise UsageError(
            f"DP-RDM's denoiser is trained on public data only, and dataset {ctx.dataset} has "
            "no public split at this profile; give it one (dataset param public=N, N > 0).")
    return {"init": init, "encoder": encoder_spec(ctx), "k": int(k), "sigma_max": float(sigma_max),
            "p_uncond": P_UNCOND, "steps": ctx.profile.train_steps, "version": "1"}


def public_conditional_denoiser(ctx, *, k: int, sigma_max: float):
    """The conditional U-Net trained on ``public`` only (cached), its encoder and stats.

    It starts from the public checkpoint (the projection of c at zero) and trains for the
    profile's fine-tuning steps on the public images, each conditioned on its k public
    neighbours' noisy mean.  Returns (model, encoder, stats).
    """
    import functools

    import numpy as np

    from leakbench.diffusion.training import train_denoiser
    from leakbench.retrieval import embed, public_encoder, public_neighbour_means

    spec = conditional_spec(ctx, k=k, sigma_max=sigma_max)
    encoder, enc_stats = public_encoder(ctx)
    p = ctx.profile

    def new_model():
        return ConditionalUNet(ctx.splits.channels, p.unet_channels, p.unet_attention,
                               cond_dim=encoder.config["dim"], precision=ctx.precision)

    def build():
        means, _ = public_neighbour_means(embed(encoder, ctx.splits.public), k)
        model = new_model()
        missing, unexpected = model.load_state_dict(ctx.public_state_dict(), strict=False)
        assert not unexpected and set(missing) <= {"cond.weight", "cond.bias", "null"}, missing
        seed = int(np.random.SeedSequence([ctx.seed, 0xD2]).generate_state(1)[0])
        torch.manual_seed(seed)
        ema, stats = train_denoiser(
            model, ctx.splits.public, schedule=ctx.schedule, steps=p.train_steps,
            batch_size=p.batch_size, learning_rate=p.learning_rate, ema_decay=p.ema_decay,
            seed=seed, device=ctx.device, progress=ctx.progress, extra=torch.from_numpy(means),
            loss_fn=functools.partial(conditional_denoising_loss, sigma_max=sigma_max,
                                      p_uncond=P_UNCOND),
            desc=f"training the retrieval-conditioned denoiser on {ctx.splits.n_public} public images",
        )
        return {"state_dict": ema.state_dict(), "stats": stats}

    payload = ctx.cache.get_or_build("conditional-denoiser", spec, build,
                                     label=f"conditional denoiser {ctx.dataset}")
    model = new_model()
    model.load_state_dict(payload["state_dict"])
    stats = {**enc_stats, "conditional_train_seconds": payload["stats"]["train_seconds"]}
    return model.to(ctx.device).eval().requires_grad_(False), encoder, stats
