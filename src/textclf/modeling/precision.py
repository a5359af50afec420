"""Where and in which precision the network runs: `train.device` and `train.precision` resolved.

`auto` is fp16 + GradScaler on CUDA and fp32 on a CPU, where bf16 autocast was measured 2x
slower for models of this size even with native bf16 (benchmarks/results/train_throughput.json);
`bf16` asks for it anyway (bf16 has fp32's range: no loss scaling).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from textclf.core.config import TrainConfig
from textclf.core.errors import TextclfError


@dataclasses.dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None = plain fp32
    scaled: bool  # fp16 needs loss scaling; bf16 has fp32's range and does not

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def resolve_precision(cfg: TrainConfig) -> Precision:
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise TextclfError(
            "train.device is cuda but no CUDA device is visible to torch. Set train.device to "
            "auto or cpu, or install a CUDA build of torch on a GPU machine."
        )
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda)
                          else "cpu")
    choice = cfg.precision
    if choice == "auto":
        # On CPU, autocast's casts around d_model-sized matmuls cost more than bf16 saves.
        choice = "fp16" if device.type == "cuda" else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]
    return Precision(device=device, dtype=dtype, scaled=choice == "fp16")
