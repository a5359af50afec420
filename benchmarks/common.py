"""What every benchmark shares: the real data, the machine's description, the results file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "agnews"
RESULTS = ROOT / "benchmarks" / "results"
# AG News's normalisation rules (params: data.details.normalize), in order.
AGNEWS_RULES = ["scrape_entities", "html_entities", "html_tags", "backslash_escapes",
                "whitespace"]
T = TypeVar("T")


def real_texts(split: str = "train") -> tuple[list[str], list[int]]:
    """Cleaned texts and 0-based labels of the shared AG News file, as the pipeline sees them."""
    import pandas as pd

    from textclf.serving.text import normalize

    path = SHARED_DATA / f"{split}.csv"
    if not path.is_file():
        sys.exit(f"benchmark needs the real data at {path}")
    frame = pd.read_csv(path, header=None, names=["label", "title", "description"], dtype=str,
                        keep_default_na=False)
    texts = [normalize(f"{t} {d}", AGNEWS_RULES)
             for t, d in zip(frame["title"], frame["description"], strict=True)]
    return texts, (frame["label"].astype(int) - 1).tolist()


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and the instruction sets these figures hinge on: bf16 autocast needs
    avx512_bf16, and ORT's int8 kernels are faster with VNNI (avx512_vnni / avx_vnni)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:  # not Linux: the model name from platform is all there is
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16")
    return {"cpu": model, "cpu_flags": [flag for flag in wanted if flag in flags]}


def machine() -> dict[str, Any]:
    import torch

    return {
        **cpu_description(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def median_of(runs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs),
            "runs": len(runs)}


def latencies(fn: Callable[[T], object], calls: Sequence[T]) -> dict[str, float]:
    """p50/p95 ms of ``fn`` over ``calls``, one call each, after 20 warm-up calls."""
    for call in calls[:20]:
        fn(call)
    times = []
    for call in calls:
        started = time.perf_counter()
        fn(call)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": statistics.median(times),
            "p95_ms": statistics.quantiles(times, n=20, method="inclusive")[-1]}


def ort_options(level: Any = None, threads: int = 0,
                config: dict[str, str] | None = None) -> Any:
    """ORT SessionOptions: graph optimisation ``level`` (None: all), intra-op ``threads`` (0:
    ORT's default), extra session config entries."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level is None \
        else level
    opts.intra_op_num_threads = threads
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    return opts


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    command = " ".join([f"python benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    result = {"benchmark": name, "command": command, "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
