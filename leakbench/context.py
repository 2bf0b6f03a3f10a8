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
    """One dataset at one profile and seed: splits, cache, device and the shared denoiser.

    ``precision`` ('fp32' or 'bf16', see :mod:`leakbench.diffusion.precision`) is the
    networks' forward precision in training, sampling and white-box queries; a non-fp32
    precision is part of every training spec and target key, so the two never share an
    artifact, and fp32 keys are those from before the option existed.
    """

    profile: Profile
    dataset: str = "digits"
    seed: int = 0
    device: str = "cpu"
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    data_root: str | os.PathLike | None = None
    progress: bool = True
    model: str | os.PathLike | None = None  # a user's diffusers model folder (--model)
    precision: str = "fp32"

    @functools.cached_property
    def external(self):
        """The user's model (``--model``), loaded from local files, or None: leakbench trains."""
        if self.model is None:
            return None
        from leakbench.diffusion.external import load_diffusers_model

        external = load_diffusers_model(self.model)
        external.model.precision = self.precision
        return external

    @property
    def image_size(self) -> int:
        """The profile's image size, or the user's model's (the dataset is resized to it)."""
        return self.external.image_size if self.external else self.profile.image_size

    @functools.cached_property
    def source(self):
        from leakbench.data.sources import open_dataset

        return open_dataset(self.dataset, data_root=self.data_root)

    @functools.cached_property
    def split_options(self):
        from leakbench.data.sources import parse_dataset_spec

        options = parse_dataset_spec(self.dataset)[2]
        if self.external is not None and options.canary:
            import dataclasses

            # The canary is a member edited before training; a model trained elsewhere
            # never saw it, so the members stay the files as they are.
            options = dataclasses.replace(options, canary=False)
        return options

    @functools.cached_property
    def splits(self):
        from leakbench.data.splits import make_splits
        from leakbench.errors import UsageError

        splits = make_splits(
            self.source,
            image_size=self.image_size,
            n_members=self.profile.n_members,
            pool_size=self.profile.pool_size,
            n_public=self.profile.n_public,
            seed=self.seed,
            options=self.split_options,
        )
        if self.external is not None and splits.channels != self.external.channels:
            def kind(c):
                return "grey (1 channel)" if c == 1 else f"{c}-channel"

            raise UsageError(
                f"The model {self.model} makes {kind(self.external.channels)} images but dataset "
                f"{self.dataset} is {kind(splits.channels)}; audit it on the images it was "
                "trained on.")
        return splits

    @functools.cached_property
    def schedule(self):
        from leakbench.diffusion.schedule import make_schedule

        if self.external is not None:
            return self.external.schedule
        return make_schedule(self.profile.schedule, self.profile.num_timesteps)

    def precision_spec(self) -> dict[str, Any]:
        """``{"precision": ...}`` for a cache key, or ``{}`` at fp32 (keys from before stay valid)."""
        return {} if self.precision == "fp32" else {"precision": self.precision}

    def _optimisation_spec(self, steps: int) -> dict[str, Any]:
        p = self.profile
        return {
            "engine": ENGINE_VERSION,
            "seed": self.seed,
            "unet": {"channels": list(p.unet_channels), "attention": p.unet_attention},
            "schedule": p.schedule,
            "num_timesteps": p.num_timesteps,
            "steps": steps,
            "batch_size": p.batch_size,
            "learning_rate": p.learning_rate,
            "ema_decay": p.ema_decay,
            "device": self.device.split(":")[0],
            **self.precision_spec(),
        }

    def pretraining_spec(self) -> dict[str, Any] | None:
        """Everything that determines the public checkpoint; None without public pretraining.

        It holds the public images' hash and never the members': changing the members
        reuses the same pretrained denoiser.
        """
        if self.external is not None or not self.splits.n_public or not self.profile.pretrain_steps:
            return None
        return {"public": self.splits.public_hash,
                **self._optimisation_spec(self.profile.pretrain_steps)}

    @property
    def member_train_steps(self) -> int:
        """Steps on the members: the profile's fine-tune after public pretraining, or, with no
        public split, pretraining's and fine-tuning's steps together (the same compute, all
        of it on the members, as when every model here was trained from scratch)."""
        p = self.profile
        return p.train_steps if self.pretraining_spec() else p.pretrain_steps + p.train_steps

    def training_spec(self) -> dict[str, Any]:
        """Everything that determines the plain denoiser's weights: its start and the members.

        For a user's model (``--model``): the hash of its files, and the splits it is audited on.
        """
        if self.external is not None:
            return {"splits": self.splits.hash, "model": self.external.fingerprint(),
                    **self.precision_spec()}
        return {"splits": self.splits.hash, "init": self.pretraining_spec(),
                **self._optimisation_spec(self.member_train_steps)}

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
            **self.precision_spec(),
            **extra,
        })

    @functools.cache  # noqa: B019  (one context per dataset; lives for the session)
    def _pretrained_payload(self) -> dict[str, Any] | None:
        from leakbench.diffusion.training import train_denoiser

        spec = self.pretraining_spec()
        if spec is None:
            return None
        p = self.profile

        def build():
            import numpy as np
            import torch

            # A stream of its own, so pretraining and fine-tuning do not reuse (t, ε) draws.
            seed = int(np.random.SeedSequence([self.seed, 0x9B1C]).generate_state(1)[0])
            torch.manual_seed(seed)
            ema, stats = train_denoiser(
                self.new_unet(), self.splits.public, schedule=self.schedule,
                steps=p.pretrain_steps, batch_size=p.batch_size, learning_rate=p.learning_rate,
                ema_decay=p.ema_decay, seed=seed, device=self.device,
                progress=self.progress,
                desc=f"pretraining denoiser on {self.splits.n_public} public images",
            )
            return {"state_dict": ema.state_dict(), "stats": stats}

        from leakbench.weights import shipped_payload

        label = f"public denoiser {self.dataset}"
        shipped = shipped_payload("pretrained", spec)
        if shipped is not None:  # the bundled default's checkpoint: copied, not retrained
            return self.cache.get_or_build("pretrained", spec, lambda: shipped,
                                           label=f"{label}, shipped with leakbench")
        return self.cache.get_or_build("pretrained", spec, build, label=label)

    def public_state_dict(self) -> dict[str, Any] | None:
        """The U-Net weights pretrained on ``public`` (EMA), or None when there is no public split."""
        payload = self._pretrained_payload()
        return None if payload is None else payload["state_dict"]

    def public_denoiser(self):
        """The U-Net pretrained on the public split only (cached), or None without one."""
        state = self.public_state_dict()
        if state is None:
            return None
        model = self.new_unet()
        model.load_state_dict(state)
        return model.to(self.device).eval().requires_grad_(False)

    @functools.cache  # noqa: B019  (one context per dataset; lives for the session)
    def public_target(self):
        """The public-only model as a plain DDIM target (samples cached per n and seed), or None.

        A model that never saw the members, of the same architecture and sampler: the null an
        attacker without the member list can calibrate against (``extraction``).
        """
        from leakbench.api import AuditTarget
        from leakbench.cache import content_key, source_hash

        model = self.public_denoiser()
        if model is None:
            return None
        key = content_key("public-target", {"code": source_hash(RunContext),
                                            "pretraining": self.pretraining_spec(),
                                            "profile": self.profile.to_dict(),
                                            **self.precision_spec()})
        return AuditTarget(key=key, model=model, schedule=self.schedule, splits=self.splits,
                           ctx=self, released="the public-only denoiser")

    def new_unet(self, *, pretrained: bool = False):
        """A fresh U-Net of the profile's size; ``pretrained`` starts it from the public checkpoint."""
        from leakbench.diffusion.unet import UNet

        if self.external is not None:
            raise self.retraining_refused("this step")
        model = UNet(self.splits.channels, self.profile.unet_channels, self.profile.unet_attention,
                     precision=self.precision)
        state = self.public_state_dict() if pretrained else None
        if state is not None:
            model.load_state_dict(state)
        return model

    @functools.cache  # noqa: B019  (one context per dataset; lives for the session)
    def _denoiser_payload(self) -> dict[str, Any]:
        from leakbench.diffusion.training import train_denoiser

        p = self.profile

        def build():
            import torch

            # Paper 001 (App. C): start from the pretrained checkpoint, fine-tune on the members
            # with the pretraining hyper-parameters (no public split: a seeded fresh start).
            torch.manual_seed(self.seed)
            model = self.new_unet(pretrained=True)
            ema, stats = train_denoiser(
                model, self.splits.members, schedule=self.schedule, steps=self.member_train_steps,
                batch_size=p.batch_size, learning_rate=p.learning_rate, ema_decay=p.ema_decay,
                seed=self.seed, device=self.device, progress=self.progress,
                desc=(f"fine-tuning denoiser on {len(self.splits.members)} members"
                      if self.pretraining_spec() else f"training denoiser on {self.dataset}"),
            )
            return {"state_dict": ema.state_dict(), "stats": stats}

        return self.cache.get_or_build("denoiser", self.training_spec(), build,
                                       label=f"denoiser {self.dataset}")

    def retraining_refused(self, who: str):
        """The one sentence for a defense that would retrain the user's model."""
        from leakbench.errors import UsageError

        return UsageError(
            f"{who} trains its own denoiser on the members, so it cannot protect the model given "
            f"with --model ({self.model}); audit that model with a sampling-time defense "
            "(ddim, rejection, cpsample).")

    def denoiser(self):
        """The plain ε-prediction U-Net fine-tuned on the members (cached; shared by defenses).

        With ``--model``: the user's model, as an ε-predictor.
        """
        if self.external is not None:
            return self.external.model.to(self.device).eval().requires_grad_(False)
        model = self.new_unet()
        model.load_state_dict(self._denoiser_payload()["state_dict"])
        return model.to(self.device).eval().requires_grad_(False)

    def pretrain_stats(self) -> dict[str, Any]:
        """Training figures of the public checkpoint ({} without public pretraining)."""
        payload = self._pretrained_payload()
        return {} if payload is None else dict(payload["stats"])

    def denoiser_stats(self) -> dict[str, Any]:
        """``train_seconds`` of the fine-tune on the members, and ``pretrain_seconds`` if any."""
        if self.external is not None:
            return {}  # trained elsewhere: no cost of ours
        stats = dict(self._denoiser_payload()["stats"])
        pre = self.pretrain_stats()
        if pre:
            stats["pretrain_seconds"] = pre["train_seconds"]
            stats["pretrain_steps"] = pre["train_steps"]
        return stats

    def training_info(self) -> dict[str, Any]:
        """The shared denoiser's costs for a target's ``info``: fine-tune and pretraining seconds."""
        stats = self.denoiser_stats()
        return {k: stats[k] for k in ("train_seconds", "pretrain_seconds") if k in stats}
