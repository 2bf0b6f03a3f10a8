"""RunContext: everything a defense or attack may ask of the harness for one dataset."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

from leakbench.cache import ArtifactCache
from leakbench.config import Profile

ENGINE_VERSION = "1"  # bump when the U-Net, schedule or training loop change numbers


def resolve_device(name: str | None) -> str:
    """'cpu' (default), 'cuda' or 'cuda:N'; 'auto' picks CUDA when present."""
    import torch

    from leakbench.errors import UsageError

    name = (name or "cpu").lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was given but no CUDA device is visible; use --device cpu.")
        return name
    if name != "cpu":
        raise UsageError(f"Unknown device {name!r}; use cpu, cuda, cuda:N or auto.")
    return name


@dataclass(eq=False)
class RunContext:
    """One dataset at one profile and seed: splits, cache, device and the shared denoiser."""

    profile: Profile
    dataset: str = "digits"
    seed: int = 0
    device: str = "cpu"
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    data_root: str | os.PathLike | None = None
    progress: bool = True

    @functools.cached_property
    def source(self):
        from leakbench.data.sources import open_dataset

        return open_dataset(self.dataset, data_root=self.data_root)

    @functools.cached_property
    def split_options(self):
        from leakbench.data.sources import parse_dataset_spec

        return parse_dataset_spec(self.dataset)[2]

    @functools.cached_property
    def splits(self):
        from leakbench.data.splits import make_splits

        return make_splits(
            self.source,
            image_size=self.profile.image_size,
            n_members=self.profile.n_members,
            pool_size=self.profile.pool_size,
            seed=self.seed,
            options=self.split_options,
        )

    @functools.cached_property
    def schedule(self):
        from leakbench.diffusion.schedule import make_schedule

        return make_schedule(self.profile.schedule, self.profile.num_timesteps)

    def training_spec(self) -> dict[str, Any]:
        """Everything that determines the plain denoiser's weights."""
        p = self.profile
        return {
            "engine": ENGINE_VERSION,
            "splits": self.splits.hash,
            "seed": self.seed,
            "unet": {"channels": list(p.unet_channels), "attention": p.unet_attention},
            "schedule": p.schedule,
            "num_timesteps": p.num_timesteps,
            "train_steps": p.train_steps,
            "batch_size": p.batch_size,
            "learning_rate": p.learning_rate,
            "ema_decay": p.ema_decay,
            "device": self.device.split(":")[0],
        }

    def target_key(self, defense, **extra: Any) -> str:
        """Cache key of a defended target: training inputs, profile, defense and its params."""
        from leakbench.cache import content_key, source_hash
        from leakbench.specs import params_dict

        return content_key("target", {
            "code": source_hash(type(defense)),
            "training": self.training_spec(),
            "profile": self.profile.to_dict(),
            "defense": defense.name,
            "defense_version": defense.version,
            "params": params_dict(defense.params),
            **extra,
        })

    def new_unet(self):
        from leakbench.diffusion.unet import UNet

        return UNet(self.splits.channels, self.profile.unet_channels, self.profile.unet_attention)

    @functools.cache  # noqa: B019  (one context per dataset; lives for the session)
    def _denoiser_payload(self) -> dict[str, Any]:
        from leakbench.diffusion.training import train_denoiser

        p = self.profile

        def build():
            import torch

            torch.manual_seed(self.seed)
            model = self.new_unet()
            ema, stats = train_denoiser(
                model, self.splits.members, schedule=self.schedule, steps=p.train_steps,
                batch_size=p.batch_size, learning_rate=p.learning_rate, ema_decay=p.ema_decay,
                seed=self.seed, device=self.device, progress=self.progress,
                desc=f"training denoiser on {self.dataset}",
            )
            return {"state_dict": ema.state_dict(), "stats": stats}

        return self.cache.get_or_build("denoiser", self.training_spec(), build,
                                       label=f"denoiser {self.dataset}")

    def denoiser(self):
        """The plain ε-prediction U-Net trained on the members (cached; shared by defenses)."""
        model = self.new_unet()
        model.load_state_dict(self._denoiser_payload()["state_dict"])
        return model.to(self.device).eval().requires_grad_(False)

    def denoiser_stats(self) -> dict[str, Any]:
        return dict(self._denoiser_payload()["stats"])
