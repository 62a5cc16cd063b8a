"""What this machine offers: GPUs as TensorFlow sees them, the CPU cores this process may use, and an
NVIDIA GPU TensorFlow cannot use.

TensorFlow is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

# Signs of an NVIDIA GPU and its driver, whether or not TensorFlow can use them.
NVIDIA_DRIVER_FILES = (Path("/proc/driver/nvidia/version"), Path("/dev/nvidia0"))
# The documented install for a GPU machine without a TensorFlow image (docs/gpu.md).
GPU_INSTALL_COMMAND = "pip install -r requirements-gpu.txt"


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


# -- where a run trains -------------------------------------------------------------------


def nvidia_gpu_present() -> bool:
    """The machine has an NVIDIA GPU with its driver: the driver's files, or ``nvidia-smi`` on the PATH."""
    return any(path.exists() for path in NVIDIA_DRIVER_FILES) or shutil.which("nvidia-smi") is not None


def gpus_hidden() -> bool:
    """``CUDA_VISIBLE_DEVICES`` empty or -1: the user hid the GPUs on purpose (the tests do, for one)."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    return hidden is not None and hidden.strip() in ("", "-1")


def unused_gpu_warning() -> str | None:
    """One line when the machine has an NVIDIA GPU that TensorFlow does not list (training then runs on
    the CPU, typically with the plain ``tensorflow`` wheel on a VM without system CUDA); else None."""
    if gpus_hidden() or not nvidia_gpu_present() or gpu_available():
        return None
    if sys.platform == "win32":
        fix = f"TensorFlow uses a GPU on Windows only inside WSL2, installed there with `{GPU_INSTALL_COMMAND}`"
    else:
        fix = f"install TensorFlow with its CUDA libraries, `{GPU_INSTALL_COMMAND}` (or pip install 'inat-keras[gpu]')"
    return (
        f"warning: this machine has an NVIDIA GPU but TensorFlow finds none, so this run trains on the CPU: {fix} (docs/gpu.md)"
    )


def gpu_name(gpu: Any) -> str:
    """The GPU's model as CUDA names it (``NVIDIA A100-SXM4-40GB``), else TensorFlow's device name."""
    import tensorflow as tf

    try:
        details = tf.config.experimental.get_device_details(gpu)
    except (RuntimeError, ValueError):
        details = {}
    return str(details.get("device_name") or gpu.name)


def describe_device(*, all_gpus: bool = False) -> str:
    """Where a run trains: ``CPU (2 cores)``, ``1 GPU (NVIDIA A100-SXM4-40GB)``, or ``1 GPU of 2 (...)``.

    Without a distribution strategy Keras trains on the first GPU only; ``all_gpus``: a strategy uses all.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        cores = usable_cores()
        return f"CPU ({cores} core{'s' if cores != 1 else ''})"
    names = [gpu_name(gpu) for gpu in gpus]
    used = names if all_gpus else names[:1]
    count = f"{len(used)} GPU{'s' if len(used) != 1 else ''}" + (f" of {len(names)}" if len(used) < len(names) else "")
    return f"{count} ({', '.join(dict.fromkeys(used))})"


def device_line(device: str, policy: str, jit_compile: bool) -> str:
    """The line a run starts with: ``device: CPU (2 cores)``, ``device: 1 GPU (NVIDIA ...), mixed_float16, XLA on``.

    On a GPU the precision and XLA are always named; on a CPU only when they differ from its defaults (float32, no XLA).
    """
    on_gpu = not device.startswith("CPU")
    settings = [policy] if on_gpu or policy != "float32" else []
    if on_gpu or jit_compile:
        settings.append(f"XLA {'on' if jit_compile else 'off'}")
    return ", ".join([f"device: {device}", *settings])
