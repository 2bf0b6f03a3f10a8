"""Ambient Diffusion: a denoiser that only ever sees masked members, sampled with fixed masks."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from leakbench.api import AuditTarget, Defense, Metric


@dataclass(frozen=True)
class AmbientParams:
    p: float = 0.2  # probability that a member pixel is erased for good (mask A)
    delta: float = 0.1  # probability that a visible pixel is erased again at a step (mask B)

    def __post_init__(self):
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"p={self.p} must be in [0, 1): the fraction of each member's "
                             "pixels that is erased")
        if not 0.0 <= self.delta < 1.0:
            raise ValueError(f"delta={self.delta} must be in [0, 1): the further fraction of "
                             "visible pixels erased at every training step")


class Ambient(Defense):
    """Train on members with a fixed fraction ``p`` of their pixels erased (Daras et al. 2023).

    The network predicts x₀ from a further-corrupted noisy image and its mask; the
    sampler and the auditor's ``predict_noise`` see it through an ε-predicting
    wrapper with one fixed mask per image.  ``predict_noise`` draws its masks from one
    seeded stream on every call (row i of a batch gets mask i), so it is a
    deterministic function of (x_t, t).

    Each member's fixed mask A is a fingerprint: at small member counts the network
    learns mask → member, so with a member's own mask it reconstructs that member
    even from pure noise.  The masks are never released (they come from a seeded
    stream of their own); samples and ``predict_noise`` use fresh masks.
    """

    name = "ambient"
    version = "1"
    Params = AmbientParams
    description = ("Ambient Diffusion: the denoiser only sees members with a fraction p of their "
                   "pixels erased (δ more each step) and samples with one fixed mask per image")
    paper = ("Daras et al. 2023, Ambient Diffusion: Learning Clean Distributions from "
             "Corrupted Data")

    def _new_net(self, ctx):
        from leakbench.diffusion.unet import UNet

        c = ctx.splits.channels
        return UNet(2 * c, ctx.profile.unet_channels, ctx.profile.unet_attention, out_channels=c)

    def train(self, ctx):
        import torch

        from leakbench.diffusion.ambient import ambient_loss, member_masks
        from leakbench.diffusion.training import train_denoiser
        from leakbench.specs import params_dict

        prof, members = ctx.profile, ctx.splits.members
        spec = {"training": ctx.training_spec(), "defense": self.name, "version": self.version,
                "params": params_dict(self.params)}

        def build():
            # The corrupted training set: the visible pixels A x₀ and the masks A.
            A = member_masks(len(members), tuple(members.shape[-2:]), self.params.p, ctx.seed)
            data = torch.cat([A * members, A], dim=1)
            torch.manual_seed(ctx.seed)
            net = self._new_net(ctx)
            ema, stats = train_denoiser(
                net, data, schedule=ctx.schedule, steps=prof.train_steps,
                batch_size=prof.batch_size, learning_rate=prof.learning_rate,
                ema_decay=prof.ema_decay, seed=ctx.seed, device=ctx.device,
                progress=ctx.progress, loss_fn=functools.partial(ambient_loss, delta=self.params.delta),
                desc=f"training ambient denoiser on {ctx.dataset}",
            )
            stats["erased_fraction"] = float(1 - A.mean())
            return {"state_dict": ema.state_dict(), "stats": stats}

        payload = ctx.cache.get_or_build("ambient", spec, build, label=f"ambient {ctx.dataset}")
        net = self._new_net(ctx)
        net.load_state_dict(payload["state_dict"])
        return {"net": net.to(ctx.device).eval().requires_grad_(False), "stats": payload["stats"]}

    def wrap(self, artifacts, ctx) -> AuditTarget:
        from leakbench.diffusion.ambient import SeededMaskDenoiser, sample_fixed_mask

        net, stats, p = artifacts["net"], artifacts["stats"], self.params

        def draw(n: int, seed: int):
            images = sample_fixed_mask(
                net, n, schedule=ctx.schedule, shape=ctx.splits.image_shape,
                steps=ctx.profile.ddim_steps, p=p.p, delta=p.delta, seed=seed,
                batch_size=ctx.profile.sample_batch_size, device=ctx.device,
                progress=ctx.progress,
            )
            return images, {}

        return AuditTarget(
            key=ctx.target_key(self),
            model=SeededMaskDenoiser(net, ctx.schedule, p=p.p, delta=p.delta, seed=ctx.seed),
            schedule=ctx.schedule,
            splits=ctx.splits,
            ctx=ctx,
            draw=draw,
            info={"train_seconds": stats["train_seconds"],
                  "erased_fraction": stats["erased_fraction"],
                  "predict_noise_masks": "one seeded stream per call; row i gets mask i"},
        )

    def figures(self, target: AuditTarget) -> list[Metric]:
        return super().figures(target) + [
            Metric("erased_fraction", target.info["erased_fraction"], direction="higher",
                   bounds=(0.0, 1.0),
                   description="fraction of member pixels the denoiser never saw (mask A)"),
        ]
