"""The undefended reference: the plain denoiser trained on the members, sampled with DDIM."""

from __future__ import annotations

from leakbench.api import AuditTarget, Defense


class DDIM(Defense):
    """Plain DDPM-trained U-Net sampled with deterministic DDIM (Song et al. 2021).

    The U-Net is pretrained on the public split and fine-tuned on the members, as paper
    001 fine-tunes a pretrained checkpoint until it replicates (``public=0``: trained on
    the members from scratch).
    """

    name = "ddim"
    version = "1"
    description = ("no defense: the plain denoiser (pretrained on the public split, fine-tuned on the "
                   "members), sampled with DDIM (η = 0)")
    paper = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models"

    def wrap(self, artifacts, ctx) -> AuditTarget:
        model = artifacts["denoiser"]
        return AuditTarget(
            key=ctx.target_key(self),
            model=model,
            schedule=ctx.schedule,
            splits=ctx.splits,
            ctx=ctx,
            info=ctx.training_info(),
            released="the plain fine-tuned denoiser",
        )

