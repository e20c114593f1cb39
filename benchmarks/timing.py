"""Timing shared by the benchmark scripts (torch-free, so it imports in the original's environment too)."""
import platform
import statistics
import time
from pathlib import Path


def median_wall_cpu(fn, repeats, warmup=0):
    """Median wall-clock and median process CPU seconds of ``fn()`` over ``repeats`` calls, after ``warmup``
    untimed calls. CPU time is the steadier measure on a shared machine: with more runnable threads than cores,
    wall time mostly measures the others."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def cpu_model():
    """The CPU's model name (every figure is quoted with it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
