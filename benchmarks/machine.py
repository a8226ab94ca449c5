"""What every benchmark records about the machine it ran on (imported by the scripts beside it)."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np
import ray
import torch


def machine_info(loadavg_start: tuple[float, float, float]) -> dict[str, Any]:
    """CPU, versions and the load average at start and end (the machine is shared and noisy)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_driver": torch.get_num_threads(),
        "ray": ray.__version__,
        "numpy": np.__version__,
        "loadavg_start": list(loadavg_start),
        "loadavg_end": list(os.getloadavg()),
    }
