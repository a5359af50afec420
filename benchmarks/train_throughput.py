"""Training throughput: the reference tutorial's train step vs this project's, side by side.

    python benchmarks/train_throughput.py [--samples 1024] [--repeats 3]

Both train the same model shape (d_model 128, 6 blocks, 4 heads, feed-forward 512, batch 128) on
the same real AG News texts, in one process, repeats interleaved; samples/s is the median over
repeats and every ratio divides medians from this one run. Each lever of the project's step is
also switched off alone, to show what it is worth.

The reference is re-implemented here from its description: tiktoken ids padded to 256 with the
end-of-text id, no padding mask, mean pooling over all 256 positions, post-norm encoder blocks
with GELU and no dropout, attention scaled by sqrt(d_model), Adam lr 1e-3, clipping 1.0, fp16
autocast + GradScaler. Its autocast and scaler target CUDA, so on this CPU they are inactive and
it trains in fp32, as the tutorial does on a CPU. It uses cl100k_base ids (gpt2's BPE file
cannot be downloaded here), so its embedding has 100,277 rows instead of 50,257.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import types
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from common import AGNEWS_RULES, median_of, real_texts, save, timed
from torch import nn
from torch.optim.swa_utils import AveragedModel

from textclf.core.config import ModelConfig, load_params
from textclf.modeling import batching, optimisation
from textclf.modeling import network as model_module
from textclf.modeling.network import TextClassifier
from textclf.modeling.precision import resolve_precision
from textclf.serving import encoding as encoding_layer
from textclf.serving.contract import TokenizerInfo
from textclf.serving.tokenizer import load_encoding, pad_id
from textclf.stages import tokenize

SEQ, D_MODEL, LAYERS, HEADS, D_FF, BATCH = 256, 128, 6, 4, 512, 128


class RefBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.norm1, self.norm2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.ff = nn.Sequential(nn.Linear(D_MODEL, D_FF), nn.GELU(), nn.Linear(D_FF, D_MODEL))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, HEADS, C // HEADS).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))
        att = (q @ k.transpose(-2, -1) / math.sqrt(D_MODEL)).softmax(dim=-1)  # no mask
        x = self.norm1(x + self.proj((att @ v).transpose(1, 2).reshape(B, T, C)))
        return self.norm2(x + self.ff(x))


class RefModel(nn.Module):
    def __init__(self, n_vocab: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(n_vocab, D_MODEL)
        self.pos = nn.Embedding(SEQ, D_MODEL)
        self.blocks = nn.Sequential(*(RefBlock() for _ in range(LAYERS)))
        self.head = nn.Linear(D_MODEL, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.tok(ids) + self.pos(torch.arange(ids.shape[1])))
        return self.head(x.mean(dim=1))  # padding included


def reference_pass(raw: np.ndarray, labels: np.ndarray, n_vocab: int) -> Callable[[], None]:
    """A closure that trains the reference over every sample once, in random batches."""
    torch.manual_seed(0)
    model = RefModel(n_vocab)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    cuda = torch.cuda.is_available()
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    order = np.random.default_rng(0).permutation(len(raw))
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]

    def one_pass() -> None:
        for index in batches:
            ids, y = torch.from_numpy(raw[index]), torch.from_numpy(labels[index])
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                loss = F.cross_entropy(model(ids), y)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()

    return one_pass


def project_pass(compact: np.ndarray, lengths: np.ndarray, labels: np.ndarray, vocab_rows: int,
                 precision: str = "auto", trim: bool = True, compile_model: bool = False,
                 average_weights: bool = True) -> Callable[[], None]:
    """A closure that runs the project's own train_step (+ weight average) over every sample."""
    torch.manual_seed(0)
    # The repo's training recipe at this script's batch size and the precision under test.
    cfg = load_params().train.model_copy(update={"batch_size": BATCH, "precision": precision})
    resolved = resolve_precision(cfg)
    model = TextClassifier(ModelConfig(d_model=D_MODEL, n_layers=LAYERS, n_heads=HEADS,
                                       d_ff=D_FF, dropout=0.0), vocab_rows,
                           num_labels=4, max_length=SEQ, sep_row=-1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=resolved.scaled)
    step_model = torch.compile(model, dynamic=True) if compile_model else model
    ema = (AveragedModel(model, multi_avg_fn=optimisation.ema_update(0.998))
           if average_weights else None)
    split = {"ids": compact, "lengths": lengths if trim else np.full_like(lengths, SEQ),
             "labels": labels}
    batches = batching.bucketed_batches(split["lengths"], BATCH, torch.Generator().manual_seed(0))

    def one_pass() -> None:
        step_model.train()
        for index in batches:
            ids, y = batching.trimmed(split, index, resolved.device)
            optimisation.train_step(step_model, ids, y, optimizer, scaler, resolved, cfg)
            if ema is not None:
                ema.update_parameters(model)

    return one_pass


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Swap the fused SDPA kernel for the textbook matmul-softmax-matmul, same masking."""

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0):
        att = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        att = att.masked_fill(~attn_mask, float("-inf")).softmax(dim=-1)
        return att @ v

    original = model_module.F
    model_module.F = types.SimpleNamespace(scaled_dot_product_attention=sdpa)
    try:
        yield
    finally:
        model_module.F = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    args = parser.parse_args()

    texts, all_labels = real_texts("train")
    pick = np.random.default_rng(0).choice(len(texts), size=args.samples, replace=False)
    encoding = load_encoding("cl100k_base")
    # Head-only truncation to SEQ ids, as the reference does.
    tok = TokenizerInfo(encoding="cl100k_base", max_length=SEQ, pad_id=pad_id(encoding),
                        n_vocab=encoding.n_vocab, lowercase=False, normalize=AGNEWS_RULES,
                        head_tokens=SEQ, pair_separator_id=-1)
    flat, lengths = tokenize.encode_corpus(tok, [texts[i] for i in pick], None)
    labels = np.array([all_labels[i] for i in pick], dtype=np.int64)
    raw = encoding_layer.pad_flat(flat, lengths, pad_id(encoding), width=SEQ)
    kept = tokenize.build_vocab(flat, encoding.n_vocab, size=0, min_freq=1)
    compact = encoding_layer.compact_map(kept, encoding.n_vocab, pad_id(encoding))[raw]
    compact_rows = len(kept) + 2

    variants: dict[str, Callable[[], Callable[[], None]]] = {
        "reference": lambda: reference_pass(raw, labels, encoding.n_vocab),
        "project": lambda: project_pass(compact, lengths, labels, compact_rows),
        "project_bf16": lambda: project_pass(compact, lengths, labels, compact_rows, "bf16"),
        "project_no_trim": lambda: project_pass(compact, lengths, labels, compact_rows,
                                                trim=False),
        "project_full_vocab": lambda: project_pass(compact, lengths, labels, encoding.n_vocab),
        "project_math_attention": lambda: project_pass(compact, lengths, labels, compact_rows),
        "project_without_weight_average": lambda: project_pass(compact, lengths, labels,
                                                               compact_rows, average_weights=False),
    }
    if args.compile:
        variants["project_compiled"] = lambda: project_pass(compact, lengths, labels,
                                                            compact_rows, compile_model=True)
    passes = {name: build() for name, build in variants.items()}
    for name, one_pass in passes.items():  # warm-up: allocator, kernels, compilation
        with math_attention() if name == "project_math_attention" else contextlib.nullcontext():
            one_pass()
    speed: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(args.repeats):
        for name, one_pass in passes.items():
            ctx = math_attention() if name == "project_math_attention" else contextlib.nullcontext()
            with ctx:
                speed[name].append(args.samples / timed(one_pass))
            print(f"{name}: {speed[name][-1]:.1f} samples/s", flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one_thread = project_pass(compact, lengths, labels, compact_rows)
    one_thread()
    speed["project_1_thread"] = [args.samples / timed(one_thread) for _ in range(args.repeats)]
    torch.set_num_threads(threads)

    medians = {name: median_of(runs) for name, runs in speed.items()}
    project = medians["project"]["median"]
    save("train_throughput", {
        "samples_per_pass": args.samples,
        "mean_real_tokens": float(lengths.mean()),
        "compact_vocab_rows": compact_rows,
        "samples_per_s": medians,
        "ratio_project_vs_reference": project / medians["reference"]["median"],
        "lever_ratios": {name: project / m["median"] for name, m in medians.items()
                         if name.startswith("project_")},
    })


if __name__ == "__main__":
    main()
