"""Describe the machine a benchmark ran on, for the committed results."""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path


def machine() -> dict[str, str | int | float | None]:
    """CPU model, core count, memory and Python/torch versions, so numbers can be compared honestly."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as info:
            kib = int(next(line.split()[1] for line in info if line.startswith("MemTotal")))
            memory = f"{kib / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "gflops": matmul_gflops(),
        "cores": os.cpu_count() or 0,
        "memory": memory,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float | None:
    """float32 matrix-multiply speed with torch's threads: machines sold as the same CPU and core count were seen 4x
    apart (one model sampled 15.5 crystals/s on one, 3.9 on another), so a speed is read beside this figure."""
    try:
        import torch
    except ImportError:
        return None
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return round(2 * size**3 * repeats / (time.perf_counter() - start) / 1e9, 1)


def describe(m: dict[str, str | int | float | None], command: str) -> str:
    """The line every result page opens with: the machine (with its measured matmul speed where known), the date and
    the command that made it."""
    speed = f", {m['gflops']} GFLOP/s float32 matmul" if m.get("gflops") else ""
    return f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}{speed}; {m['date']}. Command: `{command}`."


def cell(value: object, decimals: int = 3) -> str:
    """A table cell: floats to `decimals` places, missing values as a dash."""
    return "–" if value is None else f"{value:.{decimals}f}" if isinstance(value, float) else str(value)


def write_result(name: str, record: dict, lines: list[str]) -> None:
    """Commit-ready results: benchmarks/results/NAME.json (the record) and NAME.md (the lines), each atomically."""
    from crystext.files import write_atomic

    out = Path(__file__).resolve().parent / "results"
    write_atomic(out / f"{name}.json", json.dumps(record, indent=1) + "\n")
    write_atomic(out / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
