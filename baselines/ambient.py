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

    Like every defense, it starts from public pretraining: its own network (2C input
    channels, x₀ output) is pretrained on the public split under the same objective
    (public images corrupted the same way, masks of their own stream), then fine-tuned
    on the corrupted members.

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
        return UNet(2 * c, ctx.profile.unet_channels, ctx.profile.unet_attention, out_channels=c,
                    precision=ctx.precision)

    def _fit(self, ctx, images, masks, *, steps: int, seed: int, init: dict | None, desc: str):
        """Train the ambient network on corrupted ``images`` (fixed ``masks``) from ``init``."""
        import torch

        from leakbench.diffusion.ambient import ambient_loss
        from leakbench.diffusion.training import train_denoiser

        prof = ctx.profile
        # The corrupted training set: the visible pixels A x₀ and the masks A.
        data = torch.cat([masks * images, masks], dim=1)
        torch.manual_seed(seed)
        net = self._new_net(ctx)
        if init is not None:
            net.load_state_dict(init)
        ema, stats = train_denoiser(
            net, data, schedule=ctx.schedule, steps=steps, batch_size=prof.batch_size,
            learning_rate=prof.learning_rate, ema_decay=prof.ema_decay, seed=seed,
            device=ctx.device, progress=ctx.progress,
            loss_fn=functools.partial(ambient_loss, delta=self.params.delta), desc=desc,
        )
        stats["erased_fraction"] = float(1 - masks.mean())
        return {"state_dict": ema.state_dict(), "stats": stats}

    def _pretrained(self, ctx) -> dict | None:
        """The ambient network pretrained on the public split with the same objective.

        Public images are corrupted like the members (masks of their own stream), so
        pretraining and fine-tuning optimise one objective; the key never sees a member.
        """
        import numpy as np

        from leakbench.diffusion.ambient import member_masks
        from leakbench.specs import params_dict

        pre = ctx.pretraining_spec()
        if pre is None:
            return None
        public = ctx.splits.public
        spec = {"pretraining": pre, "defense": self.name, "version": self.version,
                "params": params_dict(self.params)}
        seed = int(np.random.SeedSequence([ctx.seed, 0x9B1C]).generate_state(1)[0])

        def build():
            masks = member_masks(len(public), tuple(public.shape[-2:]), self.params.p, ctx.seed,
                                 salt=0x9B1CA4)
            return self._fit(ctx, public, masks, steps=ctx.profile.pretrain_steps, seed=seed,
                             init=None, desc=f"pretraining ambient denoiser on {len(public)} "
                                             "public images")

        return ctx.cache.get_or_build("ambient_pretrained", spec, build,
                                      label=f"ambient public {ctx.dataset}")

    trains_denoiser = True

    def train(self, ctx):
        from leakbench.diffusion.ambient import member_masks
        from leakbench.specs import params_dict

        members = ctx.splits.members
        spec = {"training": ctx.training_spec(), "defense": self.name, "version": self.version,
                "params": params_dict(self.params)}
        pretrained = self._pretrained(ctx)

        def build():
            A = member_masks(len(members), tuple(members.shape[-2:]), self.params.p, ctx.seed)
            return self._fit(ctx, members, A, steps=ctx.member_train_steps, seed=ctx.seed,
                             init=None if pretrained is None else pretrained["state_dict"],
                             desc=f"training ambient denoiser on {ctx.dataset}")

        payload = ctx.cache.get_or_build("ambient", spec, build, label=f"ambient {ctx.dataset}")
        net = self._new_net(ctx)
        net.load_state_dict(payload["state_dict"])
        stats = dict(payload["stats"])
        if pretrained is not None:
            stats["pretrain_seconds"] = pretrained["stats"]["train_seconds"]
        return {"net": net.to(ctx.device).eval().requires_grad_(False), "stats": stats}

    def wrap(self, artifacts, ctx) -> AuditTarget:
        from leakbench.diffusion.ambient import SeededMaskDenoiser, sample_fixed_mask

        net, stats, p = artifacts["net"], artifacts["stats"], self.params

        def draw(n: int, seed: int):
            images = sample_fixed_mask(
                net, n, schedule=ctx.schedule, shape=ctx.splits.image_shape,
                steps=ctx.profile.ddim_steps, p=p.p, delta=p.delta, seed=seed,
                batch_size=ctx.profile.sample_batch_size, clip_denoised=ctx.profile.clip_x0,
                device=ctx.device,
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
            info={**{k: stats[k] for k in ("train_seconds", "pretrain_seconds") if k in stats},
                  "erased_fraction": stats["erased_fraction"],
                  "predict_noise_masks": "one seeded stream per call; row i gets mask i"},
        )

    def figures(self, target: AuditTarget) -> list[Metric]:
        return super().figures(target) + [
            Metric("erased_fraction", target.info["erased_fraction"], direction="higher",
                   bounds=(0.0, 1.0),
                   description="fraction of member pixels the denoiser never saw (mask A)"),
        ]
