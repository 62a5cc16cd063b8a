"""inat-keras: train image classifiers on iNaturalist-12K or any folder-per-class dataset.

Importing the package starts nothing: no GPU set-up, no W&B, no printing. Keras is
imported only when a model is built.
"""

from typing import Any

from inat_keras.config import CNNConfig, DataConfig, RunConfig, TrackingConfig, TrainConfig
from inat_keras.errors import UserError

__version__ = "1.0.0"

__all__ = [
    "CNNConfig",
    "DataConfig",
    "RunConfig",
    "TrackingConfig",
    "TrainConfig",
    "UserError",
    "build_cnn",
    "build_transfer",
    "count_macs",
    "count_params",
]


def __getattr__(name: str) -> Any:
    # Lazy, so `import inat_keras` stays cheap and free of TensorFlow start-up.
    if name in ("build_cnn", "count_params", "count_macs"):
        from inat_keras.models import cnn

        return getattr(cnn, name)
    if name == "build_transfer":
        from inat_keras.models.transfer import build_transfer

        return build_transfer
    raise AttributeError(f"module 'inat_keras' has no attribute {name!r}")
