"""The benchmark script: its memory meter, and one run of it on the tiny model through the
real host (a wiring check: the speed figures themselves come from the full-size model,
see docs/speed.md; no timing is asserted here)."""
from __future__ import annotations

import re
import subprocess
import sys

from maskattn_lab.host import REPO

SCRIPT = REPO / "benchmarks" / "bench_sdxl.py"
NUMBER = r"\d+\.\d+"
SPREAD = rf"{NUMBER} / {NUMBER} / {NUMBER}"


def test_peak_memory_meter_sees_a_known_allocation():
    import torch
    from maskattn_lab.peak_memory import PeakMemory
    size = 256 * 2**20      # above glibc's largest mmap threshold: handed back on free without track_cpu()
    with PeakMemory(torch.device("cpu")) as quiet:
        pass
    with PeakMemory(torch.device("cpu")) as meter:
        block = torch.ones(size // 4)
        del block
    assert quiet.peak - quiet.held < 16 * 2**20
    # within 1 MiB below: in a process that has run the host, its threads may free a
    # little memory while the block is live (the meter reports GiB-scale figures)
    assert size - 2**20 <= meter.peak - meter.held < size + 16 * 2**20


def test_bench_runs_every_part_on_the_tiny_model(host):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "tiny", "--sizes", "128", "--repeats", "1",
         "--variants", "gating,visualized,swapping,guidance-encoder", "--whole-runs"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "tiny SDXL UNet" in out and "== 128x128 (16x16 latent)" in out
    step_rows = re.findall(rf"^(\s*\S.*?)\s+({SPREAD})\s+({NUMBER})\s+({NUMBER}) GiB$", out, re.M)
    assert [r[0].strip() for r in step_rows] == [
        "Apply Masked Cross-Attention (mid-resolution)", "after Visualize Gates ran on it",
        "Region Mask Guidance: swapping, all sites", "Region Mask Guidance: guidance, encoder"]
    # Endo's window, the first 30% of a 30-step normal schedule, is 9 steps.
    guided = re.search(rf"^Region Mask Guidance: guidance, encoder\s+({SPREAD})\s+({SPREAD})\s+({SPREAD}) "
                       rf"\(9 of 30 steps guided\)$", out, re.M)
    assert guided, out
    assert out.count("\n", out.index("whole 30-step runs")) == 5, out   # header + one row per variant


def test_training_bench_prints_both_steps_beside_a_plain_forward(host):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--model", "tiny",
                             "--size", "64", "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = dict((label.strip(), (float(ratio), above)) for label, ratio, above in re.findall(
        rf"^(\S.*?)\s+{SPREAD}\s+({NUMBER})x\s*((?:{NUMBER} GiB)?)$", result.stdout, re.M))
    assert set(rows) == {"plain forward (sampling, no gates)", "training step, activations kept",
                         "training step, gradient checkpointing"}, result.stdout
    assert rows["plain forward (sampling, no gates)"] == (1.0, "")
    assert all(above.endswith("GiB") for label, (_, above) in rows.items() if label.startswith("training"))
