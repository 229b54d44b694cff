"""geoddu: segment huge GeoTIFFs with DDU-Net, a domain-decomposition U-Net."""

from .errors import Cancelled, GeodduError
from .version import __version__

__all__ = [
    "Cancelled", "GeodduError", "__version__", "assess", "load_model", "segment", "train_model",
]


def __getattr__(name: str):
    # Lazy: `import geoddu` stays cheap (no torch/rasterio import) for the CLI's --help and QGIS.
    if name == "load_model":
        from .predictor import load_model

        return load_model
    if name == "segment":
        from .engine.api import segment

        return segment
    if name == "assess":
        from .accuracy.assess import assess

        return assess
    if name == "train_model":
        from .train.api import train_model

        return train_model
    raise AttributeError(f"module 'geoddu' has no attribute {name!r}")
