"""A user's trained diffusers model as the audited denoiser (``--model``), read from local files.

The folder is either a pipeline (``model_index.json``, ``unet/``, ``scheduler/``, as
``DDPMPipeline.save_pretrained`` writes it and published checkpoints such as
google/ddpm-cifar10-32 ship) or a bare ``UNet2DModel`` folder (``config.json`` and its
weights) with a ``scheduler_config.json`` beside them.  The betas, the number of
timesteps and ``prediction_type`` come from the scheduler config; v and x₀ predictions
are converted to ε (Salimans & Ho 2022, Sec. 4), so the one DDIM sampler and every
white-box attack use the model unchanged.  Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from leakbench.diffusion.precision import autocast
from leakbench.diffusion.schedule import NoiseSchedule
from leakbench.errors import UsageError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def schedule_from_config(config: dict[str, Any]) -> NoiseSchedule:
    """ᾱ_t of a diffusers scheduler config, computed by diffusers itself (any beta_schedule)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(config)
    name = "diffusers:" + str(config.get("beta_schedule", "linear"))
    return NoiseSchedule(name, scheduler.alphas_cumprod.to(torch.float64))


class EpsilonModel(nn.Module):
    """``model(x_t, t) -> ε̂`` from a diffusers ``UNet2DModel`` predicting ε, v or x₀.

    v = √ᾱ ε − √(1−ᾱ) x₀ gives ε = √ᾱ v + √(1−ᾱ) x_t; x₀ gives ε = (x_t − √ᾱ x₀) / √(1−ᾱ).
    ``precision="bf16"`` runs the diffusers U-Net under bf16 autocast; the conversion to ε
    is fp32.
    """

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.precision = "fp32"

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(x.device.type, self.precision):
            out = self.unet(x, t).sample
        out = out.float()
        if self.prediction_type == "epsilon":
            return out
        a = self.schedule.at(t, x)
        if self.prediction_type == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * x
        return (x - a.sqrt() * out) / (1 - a).sqrt()


@dataclass
class ExternalModel:
    """A loaded ``--model`` folder: the ε-model, its schedule, its image shape and its hash."""

    path: Path
    model: EpsilonModel
    schedule: NoiseSchedule
    image_size: int
    channels: int
    prediction_type: str
    sha256: str  # of the U-Net's config and weights and of the scheduler config

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the model in cache keys (never its path: a copy is the same model)."""
        return {"sha256": self.sha256, "prediction_type": self.prediction_type,
                "num_timesteps": self.schedule.num_timesteps}


def _read_json(path: Path, origin: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{origin}: {path.name} cannot be read as JSON ({exc}); save the model "
                         "again with save_pretrained.") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{origin}: {path.name} is not a JSON object; save the model again with "
                         "save_pretrained.")
    return doc


def locate(path: str | Path) -> tuple[Path, Path]:
    """(U-Net folder, scheduler config file) of a pipeline or bare-U-Net folder, or one sentence."""
    root = Path(path).expanduser()
    origin = f"--model {root}"
    if not root.is_dir():
        raise UsageError(f"{origin} is not a folder; give the folder save_pretrained wrote.")
    if (root / "model_index.json").is_file():
        index = _read_json(root / "model_index.json", origin)
        unet_dir, scheduler_file = root / "unet", root / "scheduler" / "scheduler_config.json"
        if "unet" not in index or not (unet_dir / "config.json").is_file():
            raise UsageError(f"{origin} is a pipeline without a unet/ folder (it has: "
                             f"{', '.join(k for k in index if not k.startswith('_')) or 'nothing'}"
                             "); leakbench audits unconditional UNet2DModel pipelines.")
    elif (root / "config.json").is_file():
        unet_dir, scheduler_file = root, root / "scheduler_config.json"
    else:
        raise UsageError(f"{origin} is not a diffusers model folder (no model_index.json nor "
                         "config.json); save the model with save_pretrained, or give the folder "
                         "that holds those files.")
    if not scheduler_file.is_file():
        raise UsageError(f"{origin} has no scheduler config ({scheduler_file} is missing); save "
                         "the training scheduler beside the U-Net with "
                         "scheduler.save_pretrained(folder).")
    return unet_dir, scheduler_file


def folder_sha256(unet_dir: Path, scheduler_file: Path) -> str:
    """SHA-256 over the U-Net folder's files (config and weights) and the scheduler config."""
    from leakbench.data.base import file_sha256

    h = hashlib.sha256()
    files = sorted(p for p in unet_dir.iterdir() if p.is_file() and p != scheduler_file)
    files.append(scheduler_file)
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def load_diffusers_model(path: str | Path) -> ExternalModel:
    """Load a local diffusers ``UNet2DModel`` and its scheduler config; one sentence if it cannot."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise UsageError("--model needs the diffusers package; run `pip install diffusers`.") from None

    unet_dir, scheduler_file = locate(path)
    origin = f"--model {Path(path).expanduser()}"
    config = _read_json(unet_dir / "config.json", origin)
    unet_class = UNet2DModel
    if config.get("_class_name") == "LeakbenchUNet":  # what `leakbench export` writes
        from leakbench.diffusion.export import LeakbenchUNet as unet_class
    elif config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UsageError(f"{origin} holds a {config['_class_name']}; leakbench audits "
                         "unconditional UNet2DModel models (no text or class conditioning).")
    if config.get("num_class_embeds") or config.get("class_embed_type"):
        raise UsageError(f"{origin} is a class-conditional UNet2DModel; leakbench audits "
                         "unconditional models.")
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise UsageError(f"{origin} makes {size} images; leakbench audits square images.")
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise UsageError(f"{origin}: config.json has no image size (sample_size={size!r}); set "
                         "sample_size to the training image side.")
    channels = config.get("in_channels", 3)
    if config.get("out_channels", channels) != channels:
        raise UsageError(f"{origin} has {channels} input but {config.get('out_channels', 3)} "
                         "output channels (a learned-variance model?); leakbench audits models "
                         "whose output is one ε, v or x₀ image.")
    scheduler_config = _read_json(scheduler_file, origin)
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise UsageError(f"{origin}: the scheduler's prediction_type {prediction_type!r} is not "
                         f"supported; known: {', '.join(PREDICTION_TYPES)}.")
    try:
        schedule = schedule_from_config(scheduler_config)
    except (NotImplementedError, ValueError, TypeError) as exc:
        raise UsageError(f"{origin}: the scheduler config cannot be used ({exc}); give a DDPM or "
                         "DDIM scheduler config with its betas.") from None
    try:
        unet = unet_class.from_pretrained(unet_dir, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{origin}: the U-Net weights cannot be loaded ({first}); save the model "
                         "again with save_pretrained.") from None
    unet.eval().requires_grad_(False)
    return ExternalModel(
        path=Path(path).expanduser(), model=EpsilonModel(unet, schedule, prediction_type),
        schedule=schedule, image_size=int(size), channels=int(channels),
        prediction_type=prediction_type, sha256=folder_sha256(unet_dir, scheduler_file),
    )
