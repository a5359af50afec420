"""Every shared dataset through the whole pipeline: rows, wall time, speed, model vs baseline.

    python benchmarks/datasets.py [--datasets agnews imdb go_emotions mnli] [-S KEY=VALUE ...]
                                  [--name datasets]

For each preset, in a throw-away git copy of this repository (the checkout is never touched):
`textclf compose dataset=X` (plus any -S overrides, the same for every dataset), then `dvc repro`
from scratch, timed. Reports the rows of each split, the wall time of the pipeline and of each
stage, train samples/s (median over epochs), and the task's headline metric (accuracy; macro-F1
for multi-label) of the model and of its TF-IDF + logistic-regression baseline on the same rows.
One dataset after the other, never two at once: the 2-core machine would time them both wrong.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import save
from pipeline_runs import copy_repo, sh, stage_times

PRESETS = ("agnews", "imdb", "go_emotions", "mnli")


def run_one(dataset: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"textclf-{dataset}-") as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        copy_repo(root)
        sh(root, "textclf", "compose", f"dataset={dataset}", *overrides)
        started = time.perf_counter()
        _, log = sh(root, "dvc", "repro")
        wall = time.perf_counter() - started
        evaluation = json.loads((root / "metrics" / "eval.json").read_text())
        validation = json.loads((root / "metrics" / "validation.json").read_text())
        runtime = json.loads((root / "metrics" / "runtime" / "train.json").read_text())
        train = json.loads((root / "metrics" / "train" / "metrics.json").read_text())
    headline = "macro_f1" if evaluation["task"] == "multilabel" else "accuracy"
    model, baseline = evaluation["model"][headline], evaluation["baseline"][headline]
    return {
        "task": evaluation["task"],
        "labels": validation["labels"],
        "rows": {"train": validation["train"]["rows"], "test": validation["test"]["rows"]},
        "train_rows": evaluation["train_rows"],
        "repro_wall_s": round(wall, 1),
        "stage_s": stage_times(log),
        "train_samples_per_s": round(statistics.median(runtime["samples_per_s"]), 1),
        "epochs": train.get("epochs_run"),
        # Held out only with train.refit false (or multi-label): the figure to choose settings on.
        "best_val": {k: v for k, v in train.items() if k.startswith("best/val")},
        "headline_metric": headline,
        "model": model,
        "baseline": baseline,
        "model_minus_baseline": round(model - baseline, 6),
        "model_metrics": {k: v for k, v in evaluation["model"].items() if k != "per_class"},
        "baseline_metrics": evaluation["baseline"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("-S", dest="overrides", action="append", default=[],
                        help="a Hydra override for every dataset, e.g. -S train.seed=1")
    parser.add_argument("--name", default="datasets", help="results file name (no .json)")
    args = parser.parse_args()
    results = {}
    for dataset in args.datasets:
        results[dataset] = run_one(dataset, args.overrides)
        print(dataset, json.dumps(results[dataset]), flush=True)
    save(args.name, {"overrides": args.overrides, "datasets": results})


if __name__ == "__main__":
    main()
