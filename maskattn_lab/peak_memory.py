"""Peak memory of a block of code, on a GPU or a CPU (the benchmark's meter). Host-free,
so that its test measures a process that nothing else is allocating in."""
from __future__ import annotations

import ctypes
import gc
import re
from pathlib import Path

import torch


class PeakMemory:
    """Peak memory of what runs inside ``with``: (peak in bytes, bytes held at entry).

    CUDA: the allocator's own counters. CPU: the process's resident set (VmHWM, reset by
    /proc/self/clear_refs). For that to follow the live tensors, glibc must hand every
    large block back on free; ``track_cpu()`` sets that (mmap above 64 KiB), once, after
    the timing runs, since it costs page faults on every large allocation."""

    def __init__(self, device):
        self.device = device

    @staticmethod
    def track_cpu():
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)      # M_MMAP_THRESHOLD: fixed, 64 KiB

    @staticmethod
    def _status(field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.held = torch.cuda.memory_allocated()
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current RSS
            self.held = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = self._status("VmHWM")
        return False
