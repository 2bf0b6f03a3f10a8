"""Profiles: every size in the suite comes from one named, frozen profile."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from leakbench.errors import UsageError


@dataclass(frozen=True)
class Profile:
    """All sizes of one benchmark run.  Units are in the field names."""

    name: str
    # data
    image_size: int
    n_members: int
    pool_size: int  # members + holdout are drawn from a pool of at most this many images
    n_public: int  # public images (disjoint from the pool) the denoiser is pretrained on; 0: none
    # denoiser (U-Net + DDPM training)
    unet_channels: tuple[int, ...]
    unet_attention: bool
    num_timesteps: int
    schedule: str
    pretrain_steps: int  # steps on the public split (paper 001 starts from a pretrained model)
    train_steps: int  # fine-tuning steps on the members (no public split: pretrain + train steps)
    batch_size: int
    learning_rate: float
    ema_decay: float
    # sampling and attacks
    ddim_steps: int
    clip_x0: bool  # clip DDIM's x̂₀ to [-1, 1] at every step (paper 001's DDIM does not)
    n_samples: int
    sample_batch_size: int
    top_k_pairs: int
    holdout_quantile: float
    # defenses and attacks that later issues add read these
    classifier_steps: int = 500  # CPSample classifier's step budget (phase 1; +1/4 if relabelled)
    classifier_loss_target: float = 0.05  # its members' cross-entropy at t = 0 (paper 001, Sec. 3.2)
    n_permutations: int = 100
    mia_noise_draws: int = 4
    fid_n: int = 256  # samples (and real images) per FID; FID is biased at small n
    domain_encoder_steps: int = 500  # training steps of the fd_domain encoder
    saf_resnet_depth: int = 18  # ResNet depth of the SAF classifiers (paper 003 used 50)
    saf_classifier_steps: int = 300  # training steps of each SAF classifier (C_SAF, C_ID)
    extras: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


PROFILES: dict[str, Profile] = {
    # Seconds: proves the plumbing, not the science.
    "smoke": Profile(
        name="smoke",
        image_size=8,
        n_members=32,
        pool_size=256,
        n_public=64,
        unet_channels=(16, 32),
        unet_attention=False,
        num_timesteps=100,
        schedule="linear",
        pretrain_steps=20,
        train_steps=20,
        batch_size=16,
        learning_rate=1e-3,
        ema_decay=0.9,
        ddim_steps=5,
        clip_x0=False,
        n_samples=32,
        sample_batch_size=32,
        top_k_pairs=4,
        holdout_quantile=0.99,
        classifier_steps=20,
        n_permutations=20,
        mia_noise_draws=1,
        fid_n=10,
        saf_classifier_steps=10,
        domain_encoder_steps=50,
    ),
    # Minutes on a 2-core CPU; must show the papers' effects for real.
    "default": Profile(
        name="default",
        image_size=16,
        n_members=128,
        pool_size=2048,
        n_public=1000,
        unet_channels=(32, 64, 64),
        unet_attention=False,
        num_timesteps=1000,
        schedule="linear",
        # Pretraining on 1,000 public digits, then fine-tuning on the 128 members: DDIM-50
        # samples of the fine-tuned model replicate members (frac_above 8 % after 500 steps,
        # 27 % after 1,000, 64 % after 2,000; 0.8 % for the public-only model), so 1,000
        # fine-tuning steps reach the paper's regime "until replication appears" (measured
        # after 3,000 pretraining steps; see the README for the 2,000 used here).
        pretrain_steps=2000,
        train_steps=1000,
        batch_size=64,
        learning_rate=1e-3,
        ema_decay=0.999,
        ddim_steps=50,
        clip_x0=False,
        n_samples=1000,
        sample_batch_size=250,
        top_k_pairs=16,
        holdout_quantile=0.99,
        classifier_steps=2000,
        n_permutations=100,
        mia_noise_draws=4,
    ),
    # Paper scale (CPSample Sec. 4: 1,000-image subsets, 1,000 DDIM steps); for a GPU.
    "paper": Profile(
        name="paper",
        image_size=32,
        n_members=1000,
        pool_size=20_000,
        n_public=20_000,
        unet_channels=(64, 128, 256),
        unet_attention=True,
        num_timesteps=1000,
        schedule="linear",
        pretrain_steps=200_000,
        train_steps=100_000,
        batch_size=128,
        learning_rate=2e-4,
        ema_decay=0.9999,
        ddim_steps=1000,
        clip_x0=False,
        n_samples=10_000,
        sample_batch_size=500,
        top_k_pairs=32,
        holdout_quantile=0.99,
        classifier_steps=20_000,
        n_permutations=1000,
        mia_noise_draws=8,
        saf_resnet_depth=50,
        saf_classifier_steps=5000,
        fid_n=10_000,
        domain_encoder_steps=5000,
    ),
}


def get_profile(name: str) -> Profile:
    """Return the named profile, or fail with the list of known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UsageError(
            f"Unknown profile {name!r}; choose one of: {', '.join(PROFILES)}."
        ) from None
