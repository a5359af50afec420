"""Data-parallel training on this CPU: samples/s of 1 process against 2, and where a step goes.

    python benchmarks/ddp_cpu.py [--steps 40] [--warmup 5]

On the real AG News tokens of the workspace (data/tokens/train.npz, from `dvc repro`) and the
model of params.yaml, the train stage's own pieces (length-bucketed batches of train.batch_size
rows, each process its strided share, `train_step`, DistributedDataParallel over gloo):
- `1x1`: one process, 1 thread; `2x1`: two processes, 1 thread each (the pair the issue asks
  for); `1x2`: one process, 2 threads (what a default single-process run uses here).
- steps: the median wall time of a full training step (forward, backward with DDP's
  all-reduce overlapped, optimiser), as samples/s of the whole batch.
- split (2x1): the same batches once more, the step's compute (forward + backward under
  `no_sync`, optimiser) timed apart from one all-reduce of all gradients (a flat float32 tensor
  of the model's size, what DDP's buckets carry).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import ROOT, save

VARIANTS = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2)}


def worker(local_rank: int, nproc: int, threads: int, port: int, steps: int, warmup: int,
           out: dict) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from textclf.core.artifacts import load_split, load_vocab
    from textclf.core.config import load_params
    from textclf.core.paths import Paths
    from textclf.modeling.batching import bucketed_batches, trimmed
    from textclf.modeling.distributed import World, process_group
    from textclf.modeling.network import TextClassifier, separator_row
    from textclf.modeling.optimisation import build_optimisation, train_step
    from textclf.modeling.precision import resolve_precision
    from textclf.serving.contract import TokenizerInfo

    params = load_params(ROOT / "params.yaml")
    cfg = params.train.model_copy(update={"token_dropout": 0.0, "distill_weight": 0.0})
    paths = Paths(ROOT)
    world = World.from_env() if nproc > 1 else World()
    precision = resolve_precision(cfg)
    torch.set_num_threads(threads)
    with process_group(world, precision.device):
        torch.manual_seed(cfg.seed)
        vocab = load_vocab(paths.tokens)
        tok = TokenizerInfo(**vocab["tokenizer"])
        split = load_split(paths.tokens, "train")
        raw_ids = torch.tensor(vocab["raw_ids"], dtype=torch.int64)
        model = TextClassifier(params.model, vocab_rows=len(raw_ids) + 2,
                               num_labels=len(vocab["label_names"]), max_length=tok.max_length,
                               sep_row=separator_row(raw_ids, tok.pair_separator_id))
        opt = build_optimisation(model, cfg, precision, len(split["labels"]))
        stepper = world.wrap(model, precision.device)
        batches = bucketed_batches(split["lengths"], cfg.batch_size,
                                   torch.Generator().manual_seed(0))[:warmup + steps]
        model.train()

        def step(batch: np.ndarray) -> None:
            ids, labels = trimmed(split, world.share(batch), precision.device)
            train_step(stepper, ids, labels, opt.optimizer, opt.scaler, precision, cfg,
                       weight=len(world.share(batch)) * world.size / len(batch))

        timings = []
        for i, batch in enumerate(batches):
            started = time.perf_counter()
            step(batch)
            if i >= warmup:
                timings.append(time.perf_counter() - started)
        result = {"step_ms": statistics.median(timings) * 1e3,
                  "rows_per_step": float(np.mean([len(b) for b in batches[warmup:]]))}
        if world.size > 1:
            flat = torch.zeros(sum(p.numel() for p in model.parameters()))
            compute, reduce = [], []
            for i, batch in enumerate(batches):
                ids, labels = trimmed(split, world.share(batch), precision.device)
                dist.barrier()
                started = time.perf_counter()
                with stepper.no_sync():
                    logits = stepper(ids)
                    torch.nn.functional.cross_entropy(logits, labels.long()).backward()
                opt.optimizer.step()
                opt.optimizer.zero_grad(set_to_none=True)
                middle = time.perf_counter()
                dist.barrier()
                synced = time.perf_counter()
                dist.all_reduce(flat)
                if i >= warmup:
                    compute.append(middle - started)
                    reduce.append(time.perf_counter() - synced)
            result.update(compute_ms=statistics.median(compute) * 1e3,
                          allreduce_ms=statistics.median(reduce) * 1e3,
                          gradient_mb=flat.numel() * 4 / 2**20)
        gathered = world.all_gather(result)
        if world.writer:
            out.update(gathered[0])
            out["per_rank_step_ms"] = [round(r["step_ms"], 1) for r in gathered]


def run_variant(nproc: int, threads: int, steps: int, warmup: int) -> dict:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(worker, args=(nproc, threads, port, steps, warmup, out), nprocs=nproc)
        result = dict(out)
    result["samples_per_s"] = result["rows_per_step"] / (result["step_ms"] / 1e3)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = []
    for _ in range(args.rounds):  # interleaved, so a drift of the machine hits every variant
        rounds.append({name: run_variant(nproc, threads, args.steps, args.warmup)
                       for name, (nproc, threads) in VARIANTS.items()})
    summary = {name: {"median_samples_per_s": round(statistics.median(
        r[name]["samples_per_s"] for r in rounds), 1)} for name in VARIANTS}
    two = [r["2x1"] for r in rounds]
    summary["2x1"].update(
        median_compute_ms=round(statistics.median(r["compute_ms"] for r in two), 1),
        median_allreduce_ms=round(statistics.median(r["allreduce_ms"] for r in two), 1),
        gradient_mb=two[0]["gradient_mb"])
    for name in ("2x1", "1x2"):
        summary[name]["speedup_vs_1x1"] = round(
            summary[name]["median_samples_per_s"] / summary["1x1"]["median_samples_per_s"], 2)
    save("ddp_cpu", {"steps": args.steps, "warmup": args.warmup, "rounds": rounds,
                     "summary": summary})


if __name__ == "__main__":
    main()
