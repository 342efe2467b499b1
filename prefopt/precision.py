"""Which precision a job trains in: `auto` resolves to bf16 where the device runs bf16 matmuls natively
and fast, and to fp32 everywhere else.

    resolve("auto", "cpu")           # Resolution("fp32", "no native bf16 on this CPU: AVX2")
    resolve("auto", "cuda")          # Resolution("bf16", "CUDA device with bf16: NVIDIA H100 80GB HBM3")

Native bf16 means: a CUDA device that supports bf16 (`torch.cuda.is_bf16_supported()`), or a CPU whose
flags list avx512_bf16 or amx_bf16 (x86) or bf16 (ARM). A CPU without them still runs bf16 autocast,
through conversions: measured on an AVX2-only AMD EPYC, a bf16 matmul ran at 1.2 GFLOPS against fp32's
53 (README, "Precision"). The CPU check reads /proc/cpuinfo, so it is torch-free and the same on every
call; `ONEDNN_MAX_CPU_ISA` capped below bf16 (e.g. AVX2, AVX512_CORE) counts as no native bf16, since
oneDNN then runs no bf16 kernels.

Where `auto` resolves (docs/precision.md): the planner resolves it once when the jobs run on the
planning machine (a local CPU run), so the resolved value is in every run config, run name and
identity. For `device: cuda`, or under a cluster executor, the planning node is not where jobs run:
the run config keeps `auto`, each job resolves it on its own node (`prefopt.job`), records what it
used in its identity and summary, and a checkpoint made in another precision is never resumed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16")
CPUINFO = "/proc/cpuinfo"
# x86 flags of native bf16 matmuls (AVX512-BF16, AMX-BF16); ARM's is "bf16" in the Features line.
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# ONEDNN_MAX_CPU_ISA values that still include bf16 instructions (oneDNN's ISA names).
ONEDNN_BF16_ISAS = ("ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")


@dataclass(frozen=True)
class Resolution:
    """A resolved precision (fp32 or bf16) and the one reason for it, for the start-up line."""

    precision: str
    reason: str


def cpu_flags(cpuinfo: str | os.PathLike = CPUINFO) -> set[str]:
    """The CPU's feature flags (x86 `flags`, ARM `Features`) from /proc/cpuinfo; empty where unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_isa_name(flags: set[str]) -> str:
    """The widest vector ISA among `flags`, for messages: AVX512, AVX2, AVX, NEON or SSE."""
    for flag, name in (("avx512f", "AVX512"), ("avx2", "AVX2"), ("avx", "AVX"), ("asimd", "NEON")):
        if flag in flags:
            return name
    return "SSE" if flags else "unknown ISA"


def cpu_native_bf16(flags: set[str] | None = None, environ: dict | None = None) -> tuple[bool, str]:
    """(whether this CPU runs bf16 matmuls natively, why), from its flags and `ONEDNN_MAX_CPU_ISA`."""
    flags = cpu_flags() if flags is None else flags
    environ = os.environ if environ is None else environ
    native = [flag for flag in X86_BF16_FLAGS if flag in flags] or (["bf16"] if "bf16" in flags and "asimd" in flags else [])
    if not native:
        return False, f"no native bf16 on this CPU: {cpu_isa_name(flags)}"
    cap = environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and cap not in ONEDNN_BF16_ISAS:
        return False, f"this CPU has {native[0]}, but ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN off bf16"
    return True, f"native bf16 on this CPU: {native[0]}"


def cuda_native_bf16() -> tuple[bool, str]:
    """(whether the first visible CUDA device supports bf16, why); needs torch and a GPU."""
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device visible"
    name = torch.cuda.get_device_name(0)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return True, f"CUDA device with bf16: {name}"
    return False, f"CUDA device without native bf16: {name}"


def native_bf16(device: str) -> tuple[bool, str]:
    """(whether `device` (cpu or cuda) runs bf16 natively here, why)."""
    return cuda_native_bf16() if device == "cuda" else cpu_native_bf16()


def resolve(requested: str, device: str) -> Resolution:
    """The precision a job on this machine uses for `requested` (auto, fp32 or bf16) on `device`."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return Resolution(requested, "set in the config")
    native, why = native_bf16(device)
    return Resolution("bf16" if native else "fp32", why)


def bf16_slowdown(*, size: int = 256, repeats: int = 3) -> float:
    """How many times slower a bf16 matmul is than an fp32 one on one core of this CPU (best of
    `repeats`; ~0.3 s where bf16 is emulated, less where it is native)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: a busy second core would make a 2-thread fp32 matmul wait

    def best_time(dtype) -> float:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        torch.mm(a, b)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - started)
        return min(times)

    try:
        return best_time(torch.bfloat16) / max(best_time(torch.float32), 1e-9)
    finally:
        torch.set_num_threads(threads)


def slow_bf16_warning(key: str, device: str) -> str | None:
    """The planning-time line for an explicit `bf16` on a CPU without native bf16; None when bf16 is native
    (or the device is CUDA, which each job checks on its own node)."""
    if device != "cpu":
        return None
    native, why = cpu_native_bf16()
    if native:
        return None
    return (f"warning: {key}: bf16 requested, but {why}; a bf16 matmul measured {bf16_slowdown():.0f}x slower "
            f"than fp32 here (set {key}: auto or fp32 to run at this CPU's speed)")


def main(argv=None) -> int:
    """`python -m prefopt.precision --device cuda [--accelerate]`: what `auto` resolves to on this node
    (fp32/bf16, or accelerate's no/bf16), for a launch command that runs on the job's node."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--requested", choices=PRECISIONS, default="auto")
    parser.add_argument("--accelerate", action="store_true", help="print accelerate's --mixed_precision value")
    args = parser.parse_args(argv)
    resolved = resolve(args.requested, args.device).precision
    print(("bf16" if resolved == "bf16" else "no") if args.accelerate else resolved)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
