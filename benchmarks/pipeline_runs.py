"""The real pipeline on the real data: wall time, accuracy over seeds, experiment turnaround.

    python benchmarks/pipeline_runs.py [--seeds 42 1 2] [--reuse-cache]

In a throw-away git copy of this repository (the checkout is never touched), with the committed
params.yaml: `dvc repro` from scratch (wall time of the whole pipeline and of each stage), then
`dvc exp run -S train.seed=N` for the other seeds (accuracy mean and spread of the model against
the TF-IDF baseline on the same test split), then `dvc exp run -S train.lr=3e-4` (the turnaround
of a typical experiment: which stages ran, which came from the cache).

--reuse-cache skips the full run: the copy shares this checkout's DVC cache and restores the
committed run (`dvc checkout`), so the first seed's figures are the checkout's committed ones.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, save

IDENTITY = ["-c", "user.name=benchmark", "-c", "user.email=benchmark@textclf.invalid"]


def sh(root: Path, *args: str) -> tuple[float, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GX_ANALYTICS_ENABLED="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    started = time.perf_counter()
    done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed, done.stdout + done.stderr


def copy_repo(target: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    # ../shared beside the copy, as beside the checkout: params and dvc.lock stay as committed.
    (target.parent / "shared").symlink_to((ROOT.parent / "shared").resolve())
    sh(target, "git", "init", "-q", "-b", "main")
    sh(target, "git", "add", "-A")
    sh(target, "git", *IDENTITY, "commit", "-q", "-m", "benchmark copy")
    sh(target, "dvc", "update", "--recursive", "data/shared")  # as on a fresh clone


def stage_times(log: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"textclf (\w+): done in ([\d.]+) s", log)}


def ran(log: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", log)


def scores(root: Path) -> dict[str, float]:
    report = json.loads((root / "metrics" / "eval.json").read_text())
    return {"accuracy": report["model"]["accuracy"], "macro_f1": report["model"]["macro_f1"],
            "baseline_accuracy": report["baseline"]["accuracy"],
            "baseline_macro_f1": report["baseline"]["macro_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--reuse-cache", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        copy_repo(root)
        if args.reuse_cache:
            sh(root, "dvc", "cache", "dir", "--local", str(ROOT / ".dvc" / "cache"))
            sh(root, "dvc", "checkout")
            _, status = sh(root, "dvc", "status")
            runs = {f"seed_{args.seeds[0]}": {"committed_run": True, **scores(root)}}
            full = {"reused_committed_run": True, "dvc_status": status.strip()}
            repro_s = None
        else:
            repro_s, log = sh(root, "dvc", "repro", "--force")
            runs = {f"seed_{args.seeds[0]}": {"wall_s": repro_s, **scores(root)}}
            full = {"wall_s": repro_s, "stage_s": stage_times(log), "stages_ran": ran(log)}
            sh(root, "git", "add", "-A")
            sh(root, "git", *IDENTITY, "commit", "-q", "-m", "baseline run")

        for seed in args.seeds[1:]:
            wall, log = sh(root, "dvc", "exp", "run", "-S", f"train.seed={seed}")
            runs[f"seed_{seed}"] = {"wall_s": wall, "stages_ran": ran(log), **scores(root)}
        turnaround_s, log = sh(root, "dvc", "exp", "run", "-S", "train.lr=3e-4")
        experiment = {"wall_s": turnaround_s, "stages_ran": ran(log),
                      "stage_s": stage_times(log), **scores(root)}

    accuracies = [r["accuracy"] for r in runs.values()]
    save("pipeline_runs", {
        "full_repro": full,
        "seeds": runs,
        "model_accuracy": {"mean": statistics.mean(accuracies), "min": min(accuracies),
                           "max": max(accuracies),
                           "stdev": statistics.stdev(accuracies) if len(accuracies) > 1 else 0},
        "baseline_accuracy": runs[f"seed_{args.seeds[0]}"]["baseline_accuracy"],
        "experiment_lr_3e-4": experiment,
        "experiment_vs_full_wall": turnaround_s / repro_s if repro_s else None,
    })


if __name__ == "__main__":
    main()
