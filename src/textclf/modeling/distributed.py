"""Data-parallel training: PyTorch's launcher starts the processes, DDP averages the gradients.

`train.nproc` > 1, or `textclf train --nnodes N`, makes the train stage a launcher: it starts the
workers through torch.distributed's elastic launcher (`elastic_launch`, the engine of the
`torchrun` command) with gloo on CPUs and NCCL on CUDA, one GPU per process. Under a `torchrun`
a user started, the process is a worker already (its environment names its rank).

Every worker draws the same length-bucketed batches of `train.batch_size` rows from the same seed
and trains on its strided share of each (rows rank, rank + N, ...), its mean loss weighted by its
share of the rows: the gradient DistributedDataParallel averages is the whole batch's, so N
processes take the steps one process takes with the same batch size and learning rate, up to the
order of float sums. Only rank 0 writes (model, checkpoint, dvclive).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from textclf.core.errors import TextclfError

# A collective that waits longer than this has lost a peer that did not exit (a hung process,
# a silent network): the survivors stop instead of waiting forever.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class Nodes:
    """Machines taking part in one run; `textclf train --nnodes/--node-rank/--rdzv-endpoint`."""

    count: int = 1
    rank: int = 0
    endpoint: str = ""  # host:port of node 0, reachable from every node ("" = this machine)
    timeout_s: int = 120  # how long node 0 waits for the others, or they for it


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the workers of one run (a lone process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    launched: bool = False  # started by torchrun or its launcher

    @classmethod
    def from_env(cls) -> World:
        env = os.environ
        if "LOCAL_RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        return cls(rank=int(env["RANK"]), size=int(env["WORLD_SIZE"]),
                   local_rank=int(env["LOCAL_RANK"]),
                   local_size=int(env.get("LOCAL_WORLD_SIZE", 1)), launched=True)

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def share(self, rows: np.ndarray) -> np.ndarray:
        """This process's rows of a batch: rank, rank + size, ... (balanced lengths)."""
        return rows[self.rank::self.size]

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.size == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.tolist()

    def all_gather(self, value: Any) -> list[Any]:
        if self.size == 1:
            return [value]
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_rows(self, rows: np.ndarray, values: np.ndarray, total: int) -> np.ndarray:
        """Every rank's ``values`` for its ``rows``, put together in row order: (total, ...)."""
        if self.size == 1:
            return values
        out = np.empty((total, *values.shape[1:]), dtype=values.dtype)
        for part_rows, part in self.all_gather((rows, values)):
            out[part_rows] = part
        return out

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module the training steps call: DDP averages its gradients across ranks."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[torch.device]:
    """Join the run's process group (gloo on CPU, NCCL on CUDA); yield this rank's device."""
    if world.size == 1:
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def threads_per_process(world: World, requested: int) -> int:
    """``requested``, or this machine's cores shared out among its processes."""
    return requested or max(1, len(os.sched_getaffinity(0)) // world.local_size)


def launch(worker: Callable[..., Any], args: tuple[Any, ...], nproc: int, nodes: Nodes,
           device: torch.device) -> Any:
    """Run ``worker(*args)`` in ``nproc`` processes on this node, as torchrun would; return
    rank 0's result (None on another node). Any failure becomes one TextclfError."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _check_capacity(nproc, device)
    alone = nodes.count == 1
    config = LaunchConfig(
        min_nodes=nodes.count, max_nodes=nodes.count, nproc_per_node=nproc,
        # Alone: torchrun --standalone (a free local port). Several machines: the static
        # rendezvous, so node 0 (at the endpoint) is the one holding rank 0 and its outputs.
        run_id=f"textclf-{uuid.uuid4().hex[:12]}" if alone else "textclf-train",
        rdzv_backend="c10d" if alone else "static",
        rdzv_endpoint="localhost:0" if alone else nodes.endpoint,
        rdzv_configs={"timeout": nodes.timeout_s, "join_timeout": nodes.timeout_s}
        if alone else {"rank": nodes.rank, "timeout": nodes.timeout_s},
        max_restarts=0, monitor_interval=0.5, start_method="spawn",
    )
    where = "this machine" if alone else f"node {nodes.rank} of {nodes.count}"
    # The agent logs each failure with its traceback; the paragraph below says it once. The
    # semaphore a killed worker held is cleaned up by multiprocessing's tracker: no warning.
    for name in ("torch.distributed.elastic", "torch.multiprocessing"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")
    with tempfile.TemporaryDirectory(prefix="textclf-ranks-") as errors:
        try:
            results = elastic_launch(config, _report_errors)(errors, worker, *args)
        except ChildFailedError as exc:
            raise TextclfError(_failure_paragraph(exc, Path(errors), where)) from None
        except Exception as exc:  # rendezvous and store errors have no common base class
            if alone:
                raise
            raise TextclfError(
                f"train: node {nodes.rank} could not meet the other {nodes.count - 1} node(s) "
                f"at the rendezvous endpoint {nodes.endpoint} within {nodes.timeout_s} s "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                "Start the same command on every node, with node 0's address and a free port "
                "reachable from all of them (--rdzv-endpoint HOST:PORT), distinct --node-rank "
                "values 0..nnodes-1, and the same --nnodes; raise --rdzv-timeout if nodes "
                "start far apart. No model was written."
            ) from None
    return results.get(0)


def _report_errors(error_dir: str, worker: Callable[..., Any], *args: Any) -> Any:
    """A worker's TextclfError reaches the launcher as its paragraph, not as a traceback."""
    try:
        return worker(*args)
    except TextclfError as exc:
        (Path(error_dir) / f"rank-{os.environ.get('RANK', '0')}").write_text(str(exc))
        raise SystemExit(1) from None


def _failure_paragraph(exc: Any, errors: Path, where: str) -> str:
    reported = sorted(errors.glob("rank-*"))
    if reported:  # a worker's own explanation says more than its exit status
        return reported[0].read_text()
    rank, failure = min(exc.failures.items())
    code = failure.exitcode
    how = (f"was killed by {signal.Signals(-code).name}" if code < 0
           else f"exited with status {code}")
    return (
        f"train: rank {rank} (pid {failure.pid}) on {where} {how}, so every process of the run "
        "was stopped and no model was written. A killed process is often out of memory "
        "(lower train.batch_size or train.nproc) or was stopped by hand; its checkpoint of the "
        "last finished epoch stays in models/checkpoint/, and re-running `dvc repro` resumes "
        "from it."
    )


def _check_capacity(nproc: int, device: torch.device) -> None:
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise TextclfError(
                f"train.nproc is {nproc} but torch sees {gpus} CUDA device(s); each process "
                f"needs its own GPU. Set train.nproc to at most {gpus} "
                "(dvc exp run -S train.nproc=...).")
        return
    cores = len(os.sched_getaffinity(0))
    if nproc > cores:
        raise TextclfError(
            f"train.nproc is {nproc} but this machine gives this process {cores} CPU core(s); "
            f"more processes than cores only take turns on them. Set train.nproc to at most "
            f"{cores} (dvc exp run -S train.nproc={cores}).")
