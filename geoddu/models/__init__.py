"""DDU-Net models: encoders, decoders, the communication network and the factory."""

from .communication import CommunicationNetwork
from .ddunet import DEFAULT_CONFIG, ENCODERS, DDUNet, create_model, parse_model_name
from .resnet import ResNetEncoder
from .unet import UNet, UNetDecoder, UNetEncoder

__all__ = [
    "DEFAULT_CONFIG",
    "ENCODERS",
    "CommunicationNetwork",
    "DDUNet",
    "ResNetEncoder",
    "UNet",
    "UNetDecoder",
    "UNetEncoder",
    "create_model",
    "parse_model_name",
]
