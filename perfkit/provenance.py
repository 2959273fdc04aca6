"""Where a run came from: the machine, the software and the project's commit, recorded with every run."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import secrets
import subprocess

import torch

from perfkit.attention import cudnn_version
from perfkit.paths import PROJECT_ROOT


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The project's commit, with "-dirty" when tracked files differ from it. None outside a checkout.

    A copy of the tree without .git (the GPU machine's) can carry it in PERFKIT_GIT_COMMIT.
    """
    try:
        head = subprocess.run(["git", "-C", PROJECT_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", PROJECT_ROOT, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("PERFKIT_GIT_COMMIT") or None


def _nvml_driver() -> str | None:
    try:
        import pynvml  # nvidia-ml-py: optional, present on the GPU machine

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no pynvml, no driver, an NVML error: ask nvidia-smi instead
        return None


def _smi_driver() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def device_name(device: str | torch.device = "cpu") -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_model()


def gpu_index(device: str | torch.device) -> int | None:
    """The index of the GPU `device` names, as the machine numbers its GPUs (nvidia-smi's index): the
    process's CUDA device index, mapped through CUDA_VISIBLE_DEVICES where that lists indices (Ray sets it
    to the GPU it gives a task). None on a CPU."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    index = dev.index if dev.index is not None else (torch.cuda.current_device() if torch.cuda.is_available() else 0)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible) and all(v.isdigit() for v in visible):
        return int(visible[index])
    return index


def environment(device: str | torch.device | None = None) -> dict:
    """Provenance of this machine for `device` (default: CUDA if present, else CPU)."""
    import transformers

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    return {
        "device": str(dev),
        "device_name": device_name(dev),
        "device_count": torch.cuda.device_count() if cuda else 1,
        "gpu_memory_bytes": torch.cuda.get_device_properties(dev).total_memory if cuda else None,
        "driver_version": (_nvml_driver() or _smi_driver()) if cuda else None,
        "cuda_version": torch.version.cuda if cuda else None,
        # attention kernels differ by cuDNN release (SDPA's cuDNN backend): a comparison must see it
        "cudnn_version": str(cudnn_version()) if cuda and cudnn_version() else None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "gpu_index": gpu_index(dev),
        "git_commit": git_commit(),
        "created_utc": utc_now(),
    }
