"""Timers shared by the benchmarks and the GPU report: medians of wall and CPU time with CUDA
synchronised, one timed call, peak memory and the CPU's name."""

import platform
import resource
import statistics
import time
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer stops when it is done."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: torch.device, warmup: int, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of `fn()` after `warmup` calls.

    On a shared CPU the wall time grows with the others' load; the CPU time (with
    OMP_WAIT_POLICY=passive, so waiting threads sleep instead of spinning) stays near what an
    idle machine needs in total over its threads."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return statistics.median(wall), statistics.median(cpu)


def timed_call(fn, cuda: bool = False):
    """(fn()'s result, its wall ms, its process CPU ms), CUDA synchronised when `cuda`."""
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return out, 1000 * (time.perf_counter() - start), 1000 * (time.process_time() - cpu_start)


def peak_bytes(device: torch.device) -> int:
    """CUDA: peak allocated tensor memory. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
