"""DP-SGD: the same U-Net trained with Opacus under a target (ε, δ), sampled with DDIM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from leakbench.api import AuditTarget, Defense, Metric
from leakbench.diffusion.private import REPORTED_ACCOUNTANTS, SECURE_MODE, refused_accountant


@dataclass(frozen=True)
class DPSGDParams:
    epsilon: float = 10.0  # target ε for the planned number of steps
    delta: float = 1e-5
    max_grad_norm: float = 1.0  # per-member clipping norm C
    noise_draws: int = 1  # K: (t, ε) draws averaged per member before clipping (DPDM)
    # "gdp" is named so that it gets its reason, not just "not allowed": it is refused below.
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    physical_batch_size: int | None = None  # BatchMemoryManager's limit; None: 2 × batch size

    def __post_init__(self):
        if self.accountant not in REPORTED_ACCOUNTANTS:
            raise ValueError(refused_accountant(self.accountant))
        if not self.epsilon > 0:
            raise ValueError(f"epsilon={self.epsilon} must be positive")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta={self.delta} must be in (0, 1)")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm} must be positive")
        if self.noise_draws < 1:
            raise ValueError(f"noise_draws={self.noise_draws} must be at least 1")
        if self.physical_batch_size is not None and self.physical_batch_size < 1:
            raise ValueError(f"physical_batch_size={self.physical_batch_size} must be at least 1 "
                             "(or None for twice the profile's batch size)")


class DPSGD(Defense):
    """Differentially private training of the denoiser (Abadi et al. 2016; Dockhorn et al. 2023).

    Poisson sampling, per-member clipping to ``max_grad_norm``, Gaussian noise with σ
    calibrated by Opacus to spend at most (``epsilon``, ``delta``) over the profile's
    training steps; the ε actually spent is read back from the accountant.  Training
    starts from the checkpoint pretrained on the public split (the same one the other
    defenses fine-tune): the public data costs no privacy, the members' fine-tune does.
    """

    name = "dpsgd"
    version = "1"
    Params = DPSGDParams
    description = ("DP-SGD (Opacus): Poisson batches, per-member clipping and Gaussian noise "
                   "calibrated to a target (ε, δ); the same U-Net, sampled with DDIM")
    paper = ("Abadi et al. 2016, Deep Learning with Differential Privacy; Dockhorn et al. 2023, "
             "Differentially Private Diffusion Models (DPDM)")

    trains_denoiser = True

    def train(self, ctx):
        from leakbench.diffusion.private import train_private_denoiser
        from leakbench.specs import params_dict

        prof, p = ctx.profile, self.params
        spec = {"training": ctx.training_spec(), "defense": self.name, "version": self.version,
                "params": params_dict(p)}

        def build():
            import torch

            torch.manual_seed(ctx.seed)
            # Public pretraining, then private fine-tuning: only the fine-tune touches the
            # members, so only it is accounted (as DP diffusion models are trained in practice).
            ema, stats = train_private_denoiser(
                ctx.new_unet(pretrained=True), ctx.splits.members, schedule=ctx.schedule,
                steps=ctx.member_train_steps, batch_size=prof.batch_size,
                learning_rate=prof.learning_rate, ema_decay=prof.ema_decay, seed=ctx.seed,
                target_epsilon=p.epsilon, target_delta=p.delta, max_grad_norm=p.max_grad_norm,
                noise_draws=p.noise_draws, accountant=p.accountant,
                max_physical_batch_size=p.physical_batch_size, device=ctx.device,
                progress=ctx.progress, desc=f"DP-SGD training on {ctx.dataset}",
            )
            return {"state_dict": ema.state_dict(), "stats": stats}

        payload = ctx.cache.get_or_build("dpsgd", spec, build, label=f"dpsgd {ctx.dataset}")
        model = ctx.new_unet()
        model.load_state_dict(payload["state_dict"])
        return {"denoiser": model.to(ctx.device).eval().requires_grad_(False),
                "stats": payload["stats"]}

    def wrap(self, artifacts, ctx) -> AuditTarget:
        return AuditTarget(
            key=ctx.target_key(self),
            model=artifacts["denoiser"],
            schedule=ctx.schedule,
            splits=ctx.splits,
            ctx=ctx,
            info={**dict(artifacts["stats"]), **{k: v for k, v in ctx.training_info().items()
                                                 if k == "pretrain_seconds"}},
        )

    def figures(self, target: AuditTarget) -> list[Metric]:
        s = target.info
        spent = (f"ε spent after {s['accounted_steps']} steps at q = {s['sample_rate']:.4g}, "
                 f"by the {s['accountant']} accountant (target {s['target_epsilon']:g}); "
                 f"secure_mode={s.get('secure_mode', SECURE_MODE)}: seeded noise, fine for a "
                 "benchmark, not for a release")
        return super().figures(target) + [
            Metric("epsilon", s["epsilon"], direction="lower", bounds=(0.0, None),
                   description=spent),
            Metric("delta", s["delta"], direction="lower", bounds=(0.0, 1.0),
                   description=f"δ of the ({s['accountant']}) guarantee"),
            Metric("noise_multiplier", s["noise_multiplier"], direction="higher",
                   bounds=(0.0, None),
                   description=f"σ: noise std / clipping norm C = {s['max_grad_norm']:g}"),
            Metric("steps", s["accounted_steps"], direction=None, bounds=(0.0, None),
                   description=f"DP-SGD steps accounted ({s['accountant']} accountant)"),
        ]
