"""DP-SGD and DPDM: the same U-Net trained with Opacus under a target (ε, δ), sampled with DDIM.

``dpsgd`` is plain DP-SGD (uniform t, one noise draw per member); ``dpdm`` adds DPDM's
noise multiplicity and noise-level distribution.  Both live in this module so that an
edit to the shared code changes both defenses' source hashes (their samples' keys).
"""

from __future__ import annotations

import math
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
    version = "2"  # 2: q = batch / N for the sampler and the accountant (was 1 / ⌈N / batch⌉)
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
                noise_draws=p.noise_draws, timestep_probs=self.timestep_probs(ctx),
                accountant=p.accountant,
                max_physical_batch_size=p.physical_batch_size, device=ctx.device,
                progress=ctx.progress, desc=f"DP-SGD training on {ctx.dataset}",
            )
            return {"state_dict": ema.state_dict(), "stats": stats}

        payload = ctx.cache.get_or_build("dpsgd", spec, build,
                                         label=f"{self.name} {ctx.dataset}")
        model = ctx.new_unet()
        model.load_state_dict(payload["state_dict"])
        return {"denoiser": model.to(ctx.device).eval().requires_grad_(False),
                "stats": payload["stats"]}

    def timestep_probs(self, ctx):
        """P(t) of the training timesteps; None: uniform, as in DDPM (Ho et al. 2020)."""
        return None

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
        k = s.get("noise_draws", 1)
        spent = (f"ε spent after {s['accounted_steps']} steps at q = {s['sample_rate']:.4g}, "
                 f"by the {s['accountant']} accountant (target {s['target_epsilon']:g}; "
                 f"K = {k} noise draw{'s' if k > 1 else ''} per member, averaged before "
                 "clipping, leave it unchanged); "
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


@dataclass(frozen=True)
class DPDMParams(DPSGDParams):
    noise_draws: int = 4  # K; DPDM used 32 (MNIST) and 8 (CIFAR-10): see DPDM's docstring
    p_mean: float = -1.2  # ln σ ~ N(p_mean, p_std²): EDM's noise levels, as DPDM's configs
    p_std: float = 1.2
    sigma_data: float = math.sqrt(1 / 3)  # σ_d of EDM's loss weight (DPDM's default)

    def __post_init__(self):
        super().__post_init__()
        if not self.p_std > 0:
            raise ValueError(f"p_std={self.p_std} must be positive")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data={self.sigma_data} must be positive")


class DPDM(DPSGD):
    """DP-SGD with DPDM's two training ingredients (Dockhorn et al. 2023, TMLR).

    *Noise multiplicity* (DPDM Sec. 3.2): every member's denoising loss is averaged over
    K draws of (t, ε) before its gradient is clipped.  One member is still one record
    of the Gaussian mechanism — the K draws only change the function whose gradient is
    clipped to norm C, not the sensitivity C, the sampling rate q, σ or the number of
    steps — so the RDP/PRV accountant spends exactly the same ε for any K; what K buys
    is a less noisy per-member gradient, at K times the step's compute.

    *Noise levels*: DPDM's configs train with EDM's ln σ ~ N(−1.2, 1.2²) and EDM's loss
    weight; mapped onto our DDPM timesteps this is ``edm_timestep_probs`` (its docstring
    gives the mapping), which on the default linear schedule puts 54 % of the draws on
    t ≥ T/2 (uniform: 50 %), most between t = 400 and 800.

    K: DPDM used K = 32 on MNIST and K = 8 on CIFAR-10 (the run paper 001 compares
    against).  A step costs about K times a K = 1 step (default profile, one thread:
    3.25 CPU s at K = 4 against 0.77), so K = 32 would make the default profile's
    1,000-step fine-tune ≈ 7 CPU hours; the default K = 4 (≈ 54 CPU minutes, against
    ``dpsgd``'s 13) is the largest power of two within an hour.  ``noise_draws`` sets any K.
    Everything else (public pretraining, the profile's steps, batch and learning rate,
    clipping, accounting, DDIM-50 sampling) is ``dpsgd``'s.
    """

    name = "dpdm"
    version = "1"
    Params = DPDMParams
    description = ("DPDM: DP-SGD (Opacus) with noise multiplicity K (each member's loss "
                   "averaged over K (t, ε) draws before clipping; same ε) and EDM's noise-level "
                   "distribution on the DDPM timesteps; sampled with DDIM; departures: K = 4 "
                   "by CPU cost (DPDM: 32 on MNIST, 8 on CIFAR-10), the suite's ε-prediction "
                   "U-Net without EDM's preconditioning")
    paper = "Dockhorn et al. 2023, Differentially Private Diffusion Models (DPDM), TMLR"

    def timestep_probs(self, ctx):
        """DPDM's EDM noise levels (ln σ ~ N(p_mean, p_std²), EDM weight) on our timesteps."""
        from leakbench.diffusion.private import edm_timestep_probs

        p = self.params
        return edm_timestep_probs(ctx.schedule, p_mean=p.p_mean, p_std=p.p_std,
                                  sigma_data=p.sigma_data)

    def figures(self, target: AuditTarget) -> list[Metric]:
        s = target.info
        return super().figures(target) + [
            Metric("noise_draws", s["noise_draws"], direction=None, bounds=(1.0, None),
                   description="K: (t, ε) draws averaged per member before clipping (DPDM)"),
            Metric("mean_timestep", s["mean_timestep"], direction=None, bounds=(0.0, None),
                   description=("mean training timestep under EDM's noise levels "
                                f"(ln σ ~ N({self.params.p_mean:g}, {self.params.p_std:g}²), "
                                "EDM weight) on the DDPM schedule")),
        ]
