"""What this machine offers: GPUs as TensorFlow sees them, and the CPU cores this process may use.

TensorFlow is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import os


def usable_cores() -> int:
    """CPU cores this process may run on (a container's CPU set, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


# -- devices and precision ----------------------------------------------------------------


def gpu_available() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def configure_devices() -> None:
    """Grow GPU memory on demand so a shared GPU is not grabbed whole."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialised: too late to change, and harmless
            tf.config.experimental.set_memory_growth(gpu, True)
