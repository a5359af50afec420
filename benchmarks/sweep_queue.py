"""A sweep through DVC's queue: 4 experiments with `dvc queue start -j 1` against `-j 2`.

    python benchmarks/sweep_queue.py [--fraction 0.1] [--variants j1 j2 j2-1thread]

For each variant, in its own throw-away git copy of this repository (its own DVC cache, so no
variant restores another's results from the run-cache): `textclf compose validate.fraction=F`
and commit, queue `dvc exp run --queue -S train.lr=1e-3,3e-3 -S model.d_model=128,256`, start the
queue with -j N and wait for it. Reports the wall time from `queue start` to the last experiment
done, the CPU the whole machine used meanwhile (busy core-seconds from /proc/stat, and the mean
busy cores), and each experiment's accuracy (the same for every variant: same settings, same
seed). `j2-1thread` queues the same sweep with train.num_threads=1, so two trainings at once
share the 2 cores instead of each asking for both.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import save
from pipeline_runs import copy_repo, sh

SWEEP = ["-S", "train.lr=1e-3,3e-3", "-S", "model.d_model=128,256"]
VARIANTS = {"j1": (1, []), "j2": (2, []), "j2-1thread": (2, ["-S", "train.num_threads=1"])}


def busy_and_total_jiffies() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run_variant(name: str, fraction: float) -> dict:
    jobs, extra = VARIANTS[name]
    with tempfile.TemporaryDirectory(prefix=f"textclf-sweep-{name}-") as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        copy_repo(root)
        # `dvc exp run` composes params.yaml from conf/ and the -S overrides: the fraction is
        # one of them (a `textclf compose` beforehand would be overwritten).
        sh(root, "dvc", "exp", "run", "--queue", *SWEEP, "-S", f"validate.fraction={fraction}",
           *extra)
        busy0, total0 = busy_and_total_jiffies()
        started = time.perf_counter()
        sh(root, "dvc", "queue", "start", "-j", str(jobs))
        while True:
            _, status = sh(root, "dvc", "queue", "status")
            if "Running" not in status and "Queued" not in status:
                break
            time.sleep(2)
        wall = time.perf_counter() - started
        busy1, total1 = busy_and_total_jiffies()
        _, shown = sh(root, "dvc", "exp", "show", "--json")
        accuracies = {}
        for baseline in json.loads(shown[shown.index("["):]):
            for experiment in baseline.get("experiments") or []:
                for rev in experiment["revs"]:
                    data = rev["data"]
                    params = data["params"]["params.yaml"]["data"]
                    key = f"lr={params['train']['lr']} d_model={params['model']['d_model']}"
                    accuracies[key] = data["metrics"]["metrics/eval.json"]["data"]["model"][
                        "accuracy"]
        sh(root, "dvc", "queue", "stop")
    hz = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    busy_s = (busy1 - busy0) / hz
    return {"jobs": jobs, "extra": extra, "experiments": len(accuracies),
            "failed": status.count("Failed"), "wall_s": round(wall, 1),
            "cpu_busy_core_s": round(busy_s, 1),
            "mean_busy_cores": round(busy_s / wall, 2), "cores": cores,
            "machine_busy_share": round((busy1 - busy0) / max(1, total1 - total0), 3),
            "accuracy": dict(sorted(accuracies.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    results = {name: run_variant(name, args.fraction) for name in args.variants}
    base = results.get("j1")
    if base:
        for result in results.values():
            result["speedup_vs_j1"] = round(base["wall_s"] / result["wall_s"], 2)
    save("sweep_queue", {"fraction": args.fraction, "sweep": " ".join(SWEEP),
                         "variants": results})


if __name__ == "__main__":
    main()
