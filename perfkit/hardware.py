"""Vendor peak figures of the GPUs people run LLM inference on, matched from the device's name.

Dense peaks only (a dense transformer never gets the datasheets' 2:4-sparsity factor); `fp32` is the plain
(non-Tensor-Core) rate. A PERFKIT_HARDWARE YAML file, or `register`, adds or corrects devices; a device that
matches nothing has unknown peaks, never a guess. See docs/fast-path.md (peak table).
"""

from __future__ import annotations

import dataclasses
import os

from perfkit.errors import UnreadableFile, UsageError, read_regular


@dataclasses.dataclass(frozen=True)
class HardwareSpec:
    name: str
    match: tuple[str, ...]  # every one of these substrings must appear in the device name
    mem_bw_bytes_s: float
    bf16_flops: float
    fp16_flops: float
    fp32_flops: float
    exclude: tuple[str, ...] = ()

    def matrix_flops(self, dtype: str) -> float:
        """Dense matrix peak for a dtype name (float32 | bfloat16 | float16); NaN when unknown."""
        return {"bfloat16": self.bf16_flops, "float16": self.fp16_flops, "float32": self.fp32_flops}.get(
            dtype, float("nan"))

    def matches(self, device_name: str) -> bool:
        name = device_name.lower()
        return all(m.lower() in name for m in self.match) and not any(x.lower() in name for x in self.exclude)


# Sources (checked 2026-11). Every matrix figure is the datasheet's sparse figure halved, or its dense figure
# where it prints one.
#   H100 SXM / PCIe: NVIDIA H100 Tensor Core GPU datasheet
#       https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
#       (SXM 3.35 TB/s, BF16/FP16 1,979 TF sparse, FP32 67 TF; PCIe 2.0 TB/s, 1,513 TF sparse, FP32 51 TF;
#       also glennklockwood.com/garden/processors/h100: dense BF16 989.4 TF)
#   H200 SXM: NVIDIA H200 Tensor Core GPU datasheet https://www.nvidia.com/en-us/data-center/h200/
#       (4.8 TB/s, BF16/FP16 1,979 TF sparse, FP32 67 TF)
#   A100 40/80 GB SXM and PCIe: NVIDIA A100 datasheet
#       https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
#       (40GB 1,555 GB/s; 80GB SXM 2,039 GB/s; 80GB PCIe 1,935 GB/s; BF16/FP16 312 TF dense; FP32 19.5 TF)
#   L40S: NVIDIA L40S datasheet https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413
#       (864 GB/s, BF16/FP16 362.05 TF dense / 733 sparse, FP32 91.6 TF)
#   L4: NVIDIA L4 datasheet https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet
#       (300 GB/s, BF16/FP16 242 TF sparse, FP32 30.3 TF)
#
# Order matters: the first entry that matches wins, so more specific names come first.
# torch.cuda.get_device_name examples: "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL",
# "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB", "NVIDIA A100 80GB PCIe",
# "NVIDIA A100-PCIE-40GB", "NVIDIA L40S", "NVIDIA L4".
BUILTIN: list[HardwareSpec] = [
    # name, substrings to match, memory bandwidth (bytes/s), dense bf16, fp16, fp32 matrix peaks (FLOP/s)
    HardwareSpec("H100 PCIe", ("H100", "PCIe"), 2.0e12, 756e12, 756e12, 51e12),
    # The H100 NVL and H200 NVL have their own (different) figures and are not in the table.
    HardwareSpec("H100 SXM", ("H100",), 3.35e12, 989e12, 989e12, 67e12, exclude=("PCIe", "NVL")),
    HardwareSpec("H200 SXM", ("H200",), 4.8e12, 989e12, 989e12, 67e12, exclude=("NVL", "GH200")),
    HardwareSpec("A100 80GB PCIe", ("A100", "80GB", "PCIe"), 1.935e12, 312e12, 312e12, 19.5e12),
    HardwareSpec("A100 80GB SXM", ("A100", "80GB"), 2.039e12, 312e12, 312e12, 19.5e12),
    HardwareSpec("A100 40GB", ("A100", "40GB"), 1.555e12, 312e12, 312e12, 19.5e12),
    HardwareSpec("L40S", ("L40S",), 864e9, 362e12, 362e12, 91.6e12),
    # "NVIDIA L4" is a prefix of "NVIDIA L40"/"L40S": match the exact name.
    HardwareSpec("L4", ("NVIDIA L4",), 300e9, 121e12, 121e12, 30.3e12, exclude=("L40",)),
]

_REGISTERED: list[HardwareSpec] = []


def register(spec: HardwareSpec) -> None:
    """Add a device for this process; it is tried before the built-in table."""
    _REGISTERED.insert(0, spec)


MAX_FILE_BYTES = 1 << 20  # a PERFKIT_HARDWARE file lists a few devices


def _from_yaml(path: str) -> list[HardwareSpec]:
    import yaml

    try:  # a regular file of bounded size: a FIFO or /dev/zero is refused, not read (errors.read_regular)
        entries = yaml.safe_load(read_regular(path, "a YAML list of devices", MAX_FILE_BYTES)) or []
    except (UnreadableFile, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read PERFKIT_HARDWARE file {path!r}: {exc}") from None
    if not isinstance(entries, list):
        raise UsageError(f"PERFKIT_HARDWARE file {path!r}: expected a list of devices")
    specs = []
    for i, e in enumerate(entries):
        try:
            specs.append(HardwareSpec(
                name=str(e["name"]),
                match=tuple(e.get("match") or [e["name"]]),
                exclude=tuple(e.get("exclude") or ()),
                mem_bw_bytes_s=float(e["mem_bw_bytes_s"]),
                bf16_flops=float(e.get("bf16_flops", "nan")),
                fp16_flops=float(e.get("fp16_flops", "nan")),
                fp32_flops=float(e.get("fp32_flops", "nan")),
            ))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"PERFKIT_HARDWARE file {path!r}, entry {i}: expected name and mem_bw_bytes_s "
                             f"(and bf16_flops/fp16_flops/fp32_flops as numbers), got {e!r} ({exc})") from None
    return specs


def table() -> list[HardwareSpec]:
    """Every known device, in matching order: PERFKIT_HARDWARE file, then `register`ed, then built-in."""
    path = os.environ.get("PERFKIT_HARDWARE")
    return (_from_yaml(path) if path else []) + _REGISTERED + BUILTIN


def lookup(device_name: str | None) -> HardwareSpec | None:
    """The spec whose name matches `device_name` (torch.cuda.get_device_name), or None: unknown."""
    if not device_name:
        return None
    for spec in table():
        if spec.matches(device_name):
            return spec
    return None


def by_name(name: str) -> HardwareSpec:
    """A table entry by its `name` (e.g. "H100 SXM"). Raises UsageError naming the choices."""
    for spec in table():
        if spec.name.lower() == name.lower():
            return spec
    raise UsageError(f"unknown hardware {name!r}: expected one of {', '.join(s.name for s in table())}")
