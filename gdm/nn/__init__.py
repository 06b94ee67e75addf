"""ADM networks: UNet, super-resolution UNet, noisy classifier, released-model presets."""

from gdm.nn.classifier import EncoderUNet
from gdm.nn.presets import PRESETS, Preset, build_model, build_preset, count_parameters
from gdm.nn.unet import SuperResUNet, UNet

__all__ = [
    "PRESETS",
    "EncoderUNet",
    "Preset",
    "SuperResUNet",
    "UNet",
    "build_model",
    "build_preset",
    "count_parameters",
]
