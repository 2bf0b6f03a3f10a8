"""The plugin contracts: Defense, Attack, AuditTarget, Finding and Metric.

A defense turns the members into an ``AuditTarget``; an attack turns an
``AuditTarget`` into a ``Finding``.  Attacks never learn which defense they face.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from leakbench.context import RunContext
    from leakbench.data.splits import Splits
    from leakbench.diffusion.schedule import NoiseSchedule

Direction = Literal["lower", "higher"]
"""Which way is safer: ``"lower"`` means a lower value leaks less."""

Access = Literal["black-box", "white-box"]

ModelAccess = Literal["effective", "released"]
"""Which noise predictor a white-box attack queries: ``"effective"`` (the one the sampler
uses, guidance included) or ``"released"`` (the weights a published checkpoint ships)."""


@dataclass(frozen=True)
class NoParams:
    """Params class for plugins without parameters."""


@dataclass(frozen=True)
class Metric:
    """One number with its uncertainty and its meaning."""

    name: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n: int | None = None
    direction: Direction | None = None
    bounds: tuple[float | None, float | None] = (None, None)
    description: str = ""

    def __post_init__(self):
        v = float(self.value)
        if math.isnan(v):
            raise ValueError(f"metric {self.name!r} is NaN; an attack must report a number")
        object.__setattr__(self, "value", v)


@dataclass
class Finding:
    """What one attack found on one target: metrics, plot arrays and free-form info."""

    metrics: list[Metric]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    headline: str | None = None

    def __getitem__(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"no metric {name!r}; have {[m.name for m in self.metrics]}")

    def value(self, name: str) -> float:
        return self[name].value


EpsModel = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""A noise predictor ``eps(x_t, t)``: x_t is (N, C, H, W) in model scale, t is (N,) int64."""

Sampler = Callable[[int, int], "tuple[torch.Tensor, dict[str, Any]]"]
"""``draw(n, seed) -> (images in [-1, 1], info)``."""


class AuditTarget:
    """What an attack may touch: samples, the effective noise predictor, schedule, splits.

    ``predict_noise`` is the *effective* predictor the sampler uses, guidance
    included; ``released_model`` is what a published checkpoint would ship (for a
    sampling-time defense the plain denoiser, described by ``released``).  ``sample``
    results are cached per (target key, n, seed) and shared by every attack on the
    same target.
    """

    def __init__(
        self,
        *,
        key: str,
        model: EpsModel,
        schedule: NoiseSchedule,
        splits: Splits,
        ctx: RunContext,
        draw: Sampler | None = None,
        info: dict[str, Any] | None = None,
        released_model: EpsModel | None = None,
        released: str = "the model the sampler uses",
    ):
        self.key = key
        self._model = model
        self.released_model: EpsModel = model if released_model is None else released_model
        self.released = released
        self.schedule = schedule
        self.splits = splits
        self._ctx = ctx
        self._draw = draw or self._ddim_draw
        self.info: dict[str, Any] = dict(info or {})
        self.sample_info: dict[str, Any] = {}

    @property
    def device(self):
        return self._ctx.device

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The effective noise prediction at (x_t, t), as the sampler sees it."""
        return self._model(x_t.to(self.device), t.to(self.device))

    def predict_released(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise prediction of the released weights at (x_t, t), with no sampling-time parts."""
        return self.released_model(x_t.to(self.device), t.to(self.device))

    def noise_predictor(self, access: ModelAccess) -> EpsModel:
        """``predict_noise`` for ``access="effective"``, ``predict_released`` for ``"released"``."""
        if access not in ("effective", "released"):
            raise ValueError(f"access={access!r} must be 'effective' or 'released'")
        return self.predict_noise if access == "effective" else self.predict_released

    @property
    def released_differs(self) -> bool:
        """Whether the released weights predict differently from the sampler's predictor."""
        return self.released_model is not self._model

    def sample(self, n: int, *, seed: int | None = None) -> torch.Tensor:
        """``n`` samples in [-1, 1], shape (n, C, H, W), on the CPU; cached per (key, n, seed)."""
        seed = self._ctx.seed if seed is None else seed
        spec = {"target": self.key, "n": int(n), "seed": int(seed)}

        def build():
            t0 = time.perf_counter()
            images, info = self._draw(int(n), int(seed))
            info = {**info, "sampling_seconds": time.perf_counter() - t0}
            return {"images": images.detach().cpu().float().contiguous(), "info": info}

        payload = self._ctx.cache.get_or_build("samples", spec, build, label=f"samples n={n}")
        images = payload["images"]
        if not bool(images.isfinite().all()):
            from leakbench.errors import DataError

            raise DataError(
                f"The target {self.key[:12]} produced NaN or infinite samples; the defense is "
                "numerically unstable at these settings (try a smaller guidance scale)."
            )
        self.sample_info[(int(n), int(seed))] = payload["info"]
        return images

    def _ddim_draw(self, n: int, seed: int):
        from leakbench.diffusion.sampling import sample_images

        return sample_images(
            self._model,
            n,
            schedule=self.schedule,
            shape=self.splits.image_shape,
            steps=self._ctx.profile.ddim_steps,
            seed=seed,
            batch_size=self._ctx.profile.sample_batch_size,
            clip_denoised=self._ctx.profile.clip_x0,
            device=self.device,
            progress=self._ctx.progress,
        ), {}


class Plugin(ABC):
    """Shared shape of defenses and attacks: class-level name/version and a params dataclass."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Params: ClassVar[type] = NoParams
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()
        if not isinstance(self.params, self.Params):
            raise TypeError(f"{self.name}: params must be a {self.Params.__name__}")


class Defense(Plugin):
    """How a model is trained and sampled.

    ``train`` produces the artifacts (the default: the shared plain denoiser trained
    on the members, cached); ``wrap`` turns them into an ``AuditTarget``.
    Sampling-time defenses wrap the denoiser; they never fork the sampler.
    A training-time defense (its ``train`` fits a denoiser of its own) sets
    ``trains_denoiser``: it cannot protect a user's model given with ``--model``.
    """

    trains_denoiser: ClassVar[bool] = False

    def train(self, ctx: RunContext) -> dict[str, Any]:
        return {"denoiser": ctx.denoiser()}

    @abstractmethod
    def wrap(self, artifacts: dict[str, Any], ctx: RunContext) -> AuditTarget: ...

    def figures(self, target: AuditTarget) -> list[Metric]:
        """Figures that belong to the defense itself (costs); stored under attack ``defense``."""
        out = []
        if "pretrain_seconds" in target.info:
            out.append(Metric("pretrain_seconds", target.info["pretrain_seconds"],
                              description="pretraining on the public split (shared, cached; the "
                                          "bundled default's checkpoint ships with leakbench: "
                                          "this is what training it cost)"))
        if "train_seconds" in target.info:
            out.append(Metric("train_seconds", target.info["train_seconds"], direction=None,
                              description="training on the members (the fine-tune when "
                                          "pretrained)"))
        for (n, _seed), info in sorted(target.sample_info.items()):
            if "sampling_seconds" in info:
                out.append(
                    Metric("sampling_seconds_per_image", info["sampling_seconds"] / max(n, 1), n=n)
                )
                break
        return out


class Attack(Plugin):
    """How an auditor tries to get training data back out of an ``AuditTarget``.

    A white-box attack's params carry ``access`` (a :data:`ModelAccess`): it queries
    ``target.noise_predictor(self.params.access)``, and :meth:`threat_model` names it.
    """

    access: ClassVar[Access] = "black-box"
    reference_defense: ClassVar[str | None] = None
    """A defense spec to compare against: the harness also runs this attack on that
    defense's target (same dataset, profile and seed) and appends ``compare``'s metrics."""

    @abstractmethod
    def run(self, target: AuditTarget, ctx: RunContext) -> Finding: ...

    def compare(self, finding: Finding, reference: Finding) -> list[Metric]:
        """Metrics of ``finding`` relative to the same attack's finding on the reference."""
        return []

    def threat_model(self) -> str:
        """What the adversary holds: ``black-box`` (samples only), or ``white-box/effective``
        (the predictor the sampler uses) or ``white-box/released`` (the published weights)."""
        if self.access == "black-box":
            return "black-box"
        return f"white-box/{getattr(self.params, 'access', 'effective')}"

    def threat_info(self, target: AuditTarget) -> dict[str, Any]:
        """The threat model for a finding's info; under ``released`` access, what was released and
        whether it differs from the sampler's predictor (when not, the defense changes only the
        sampler and protects nothing against this attack once the weights are out)."""
        info: dict[str, Any] = {"threat_model": self.threat_model()}
        if self.threat_model() == "white-box/released":
            info["released_model"] = target.released
            info["released_differs_from_effective"] = target.released_differs
            if not target.released_differs:
                info["released_note"] = ("the released weights are the sampler's own predictor: "
                                         "effective and released access give the same numbers")
        return info
