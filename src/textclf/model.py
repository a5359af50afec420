"""The transformer encoder classifier, its raw-id wrapper, and the ``models/model.pt`` bundle.

Reads top-down: attention -> block -> classifier -> raw-id wrapper -> save/load.
Shapes: B = batch, T = sequence length (<= max_length), C = d_model, H = heads, K = labels.
Compact ids: row 0 is padding, row 1 is "unknown", rows 2.. are the training split's token ids.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from textclf.atomic import atomic_path
from textclf.config import ModelConfig
from textclf.errors import TextclfError
from textclf.tokenization import PAD_ROW, UNK_ROW, compact_map

BUNDLE_FORMAT = 1


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # Fused SDPA kernel; `attend` (B, 1, 1, T) hides padded keys from every query.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, C/H)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff),
            nn.GELU(),
            nn.Linear(cfg.d_ff, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), attend))
        return x + self.mlp(self.norm2(x))


class TextClassifier(nn.Module):
    """Compact ids (B, T) -> logits (B, K)."""

    def __init__(self, cfg: ModelConfig, vocab_rows: int, num_labels: int, max_length: int):
        super().__init__()
        self.cfg = cfg
        self.max_length = max_length
        self.tok_emb = nn.Embedding(vocab_rows, cfg.d_model, padding_idx=PAD_ROW)
        self.pos_emb = nn.Embedding(max_length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, num_labels)
        self.apply(_init_weights)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        real = ids != PAD_ROW  # (B, T)
        # An empty text has no real token; letting position 0 count keeps softmax and the
        # mean finite (no NaN) and gives such rows a fixed, well-defined prediction.
        first = torch.arange(T, device=ids.device) == 0
        real = real | first  # (B, T)
        positions = torch.arange(T, device=ids.device)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(positions))  # (B, T, C)
        attend = real[:, None, None, :]  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, attend)
        x = self.norm(x)
        weights = real.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * weights).sum(1) / weights.sum(1)  # masked mean, (B, C)
        return self.head(pooled)  # (B, K)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])


def batched_logits(model: TextClassifier, ids: np.ndarray, lengths: np.ndarray, batch_size: int,
                   device: torch.device | None = None,
                   autocast: Callable[[], AbstractContextManager] = nullcontext) -> np.ndarray:
    """float32 (N, K) logits for compact ids (N, max_length), in the input's row order.

    Longest rows first, each batch cut to its longest real sequence: attention costs T^2, so
    similar lengths per batch and no padding to max_length make scoring several times faster.
    """
    order = np.argsort(-lengths, kind="stable")
    out = np.empty((len(ids), model.head.out_features), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(1, int(lengths[rows].max()))
            batch = torch.from_numpy(ids[rows, :width].astype(np.int64)).to(device or "cpu")
            with autocast():
                logits = model(batch)
            out[rows] = logits.float().cpu().numpy()
    return out


def compact_id_map(vocab_raw_ids: torch.Tensor, n_vocab: int, pad_id: int) -> torch.Tensor:
    """Lookup table raw tiktoken id -> compact row, shape (n_vocab,), int64."""
    return torch.from_numpy(compact_map(vocab_raw_ids.numpy(), n_vocab, pad_id))


class RawIdClassifier(nn.Module):
    """Raw tiktoken ids (B, T) -> logits (B, K): the exported graph, map included."""

    def __init__(self, model: TextClassifier, id_map: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        # One extra "unknown" row at the end: clamping any id to [-1, n] then lands every id
        # outside the table (another encoding's, or negative) on it, never out of range: a clip
        # and a gather in the graph instead of range tests and a select (3 ONNX ops, not 9).
        self.register_buffer("id_map", torch.cat([id_map, id_map.new_tensor([UNK_ROW])]))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = self.id_map.shape[0] - 1  # the tokenizer's id range
        return self.model(self.id_map[input_ids.clamp(-1, n)])


@dataclass(frozen=True)
class TokenizerInfo:
    encoding: str
    max_length: int
    pad_id: int
    n_vocab: int
    lowercase: bool = False


@dataclass
class Bundle:
    """Everything ``models/model.pt`` holds; enough to rebuild, evaluate and export the model."""

    model: TextClassifier
    vocab_raw_ids: torch.Tensor  # (V - 2,) int64: raw id of compact rows 2..
    label_names: list[str]
    tokenizer: TokenizerInfo
    train_config: dict[str, Any]
    package_version: str

    def raw_id_model(self) -> RawIdClassifier:
        t = self.tokenizer
        return RawIdClassifier(self.model, compact_id_map(self.vocab_raw_ids, t.n_vocab, t.pad_id))


def save_bundle(path: Path | str, bundle: Bundle) -> None:
    """Write the bundle atomically with plain types only, so it loads with weights_only=True."""
    state = {k: v.detach().cpu() for k, v in bundle.model.state_dict().items()}
    payload = {
        "format": BUNDLE_FORMAT,
        "state_dict": state,
        "model_config": dataclasses.asdict(bundle.model.cfg),
        "vocab_raw_ids": bundle.vocab_raw_ids.cpu(),
        "label_names": list(bundle.label_names),
        "tokenizer": dataclasses.asdict(bundle.tokenizer),
        "train_config": dict(bundle.train_config),
        "package_version": bundle.package_version,
    }
    # Into an open file: given a path, torch.save names the archive's root folder after the
    # (random) temp name, and equal bundles would differ in bytes, hence in DVC's md5.
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        torch.save(payload, fh)


def load_bundle(path: Path | str) -> Bundle:
    """Load ``models/model.pt`` safely (weights_only=True) and rebuild the model in eval mode."""
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
        raise TextclfError(
            f"{path}: not a textclf model bundle (format {BUNDLE_FORMAT}). "
            "Re-create it with `dvc repro train`."
        )
    cfg = ModelConfig(**payload["model_config"])
    tok = TokenizerInfo(**payload["tokenizer"])
    state = payload["state_dict"]
    model = TextClassifier(
        cfg,
        vocab_rows=state["tok_emb.weight"].shape[0],
        num_labels=len(payload["label_names"]),
        max_length=tok.max_length,
    )
    model.load_state_dict(state)
    model.eval()
    return Bundle(
        model=model,
        vocab_raw_ids=payload["vocab_raw_ids"],
        label_names=list(payload["label_names"]),
        tokenizer=tok,
        train_config=dict(payload["train_config"]),
        package_version=payload["package_version"],
    )


def safe_torch_load(path: Path | str) -> Any:
    """``torch.load`` with ``weights_only=True``; a pickled object is refused with a clear error."""
    path = Path(path)
    if not path.exists():
        raise TextclfError(f"{path}: not found. Run the stage that makes it (`dvc repro`).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TextclfError(
            f"{path}: refused to load: it holds objects other than tensors and plain data "
            f"({str(exc).splitlines()[0]}). Loading it could run arbitrary code. Only load "
            "files this project wrote; re-create it with `dvc repro`."
        ) from None
    except (RuntimeError, EOFError, io.UnsupportedOperation) as exc:
        raise TextclfError(
            f"{path}: not a readable torch file ({exc}). It may be truncated; delete it and "
            "re-run `dvc repro`."
        ) from None
