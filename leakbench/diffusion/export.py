"""Export a trained leakbench denoiser as a diffusers pipeline folder (``leakbench export``).

Our U-Net cannot be written as a ``UNet2DModel``: its levels have one residual block
that takes one skip connection, its time embedding puts cos before sin, and its
upsampling convolution changes the channel count; diffusers' blocks have
``layers_per_block + 1`` resnets per up level, each taking a skip.  So the folder holds
the weights as ``diffusers`` writes any model: ``unet/config.json`` and
``unet/diffusion_pytorch_model.safetensors`` of :class:`LeakbenchUNet` (a diffusers
``ModelMixin`` around our U-Net), ``scheduler/scheduler_config.json`` (a
``DDPMScheduler`` with our betas, ε prediction) and a ``model_index.json`` naming
``leakbench.diffusion.export.LeakbenchUNet`` as the U-Net's class.  ``--model`` loads it
back; with leakbench installed, ``DDPMPipeline.from_pretrained`` does too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ConfigMixin, DDPMScheduler, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

from leakbench.diffusion.schedule import NoiseSchedule
from leakbench.diffusion.unet import UNet


class LeakbenchUNet(ModelMixin, ConfigMixin):
    """Our ε-prediction U-Net behind diffusers' model interface: ``(sample, timestep) -> .sample``."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (32, 64, 64),
                 attention: bool = False, sample_size: int = 16):
        super().__init__()
        self.net = UNet(in_channels, tuple(channels), attention)

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1)
        out = self.net(sample, t.expand(sample.shape[0]))
        return UNet2DOutput(sample=out) if return_dict else (out,)


def betas_of(schedule: NoiseSchedule) -> list[float]:
    """β_t = 1 − ᾱ_t / ᾱ_{t−1} (ᾱ_{−1} = 1), the betas that give back the schedule's ᾱ."""
    ab = schedule.alpha_bar
    prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    return (1 - ab / prev).tolist()


def export_denoiser(denoiser: UNet, schedule: NoiseSchedule, out: str | Path, *,
                    image_size: int, clip_x0: bool = False) -> Path:
    """Write ``denoiser`` and its schedule as a diffusers pipeline folder at ``out``."""
    import diffusers

    out = Path(out)
    cfg = denoiser.config
    unet = LeakbenchUNet(in_channels=cfg["in_channels"], channels=list(cfg["channels"]),
                         attention=cfg["attention"], sample_size=int(image_size))
    unet.net.load_state_dict(denoiser.state_dict())
    unet.save_pretrained(out / "unet")
    DDPMScheduler(num_train_timesteps=schedule.num_timesteps, trained_betas=betas_of(schedule),
                  prediction_type="epsilon", clip_sample=clip_x0).save_pretrained(out / "scheduler")
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["leakbench.diffusion.export", "LeakbenchUNet"],
             "scheduler": ["diffusers", "DDPMScheduler"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
