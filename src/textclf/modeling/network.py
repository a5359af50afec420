"""The transformer encoder classifier and its raw-id wrapper (the graph that is exported).

Reads top-down: attention -> block -> classifier -> raw-id wrapper.
Shapes: B = batch, T = sequence length (<= max_length), C = d_model, H = heads, K = labels.
Compact ids: row 0 is padding, row 1 is "unknown", rows 2.. are the training split's token ids.
A pair arrives as one sequence, first text + separator + second text; the model tells the sides
apart by a segment embedding it derives from the separator itself, so the exported graph still
takes one tensor of ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textclf.core.config import ModelConfig
from textclf.serving.encoding import PAD_ROW, UNK_ROW, compact_map


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

    def __init__(self, cfg: ModelConfig, vocab_rows: int, num_labels: int, max_length: int,
                 sep_row: int):
        super().__init__()
        self.cfg = cfg
        self.max_length = max_length
        self.sep_row = sep_row  # the pair separator's compact row; -1: single texts
        self.tok_emb = nn.Embedding(vocab_rows, cfg.d_model, padding_idx=PAD_ROW)
        self.pos_emb = nn.Embedding(max_length, cfg.d_model)
        self.seg_emb = nn.Embedding(2, cfg.d_model) if sep_row >= 0 else None
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
        x = self.tok_emb(ids) + self.pos_emb(positions)  # (B, T, C)
        if self.seg_emb is not None:
            # 0 up to the separator, 1 from it on: which text of the pair a token belongs to.
            segment = (ids == self.sep_row).long().cumsum(1).clamp(max=1)  # (B, T)
            x = x + self.seg_emb(segment)
        x = self.drop(x)
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


def separator_row(vocab_raw_ids: torch.Tensor, separator_id: int) -> int:
    """The compact row of the pair separator (rows 2.. follow the sorted raw ids); -1 if none."""
    if separator_id < 0:
        return -1
    return 2 + int(torch.searchsorted(vocab_raw_ids, separator_id))


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
