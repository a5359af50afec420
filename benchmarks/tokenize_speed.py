"""Tokenization speed: the tokenize stage on the real AG News files, and its encoding choices.

    python benchmarks/tokenize_speed.py [--repeats 5]

Times `tokenize.run` without its teacher (read parquet, split, encode, vocabulary, pad,
save) on the real
20k-train + 3.8k-test files in a temp project, median of repeats, and extrapolates linearly to
the full 120k-row train split (stated as an extrapolation: the full file is not available here).
Also compares, on the same texts, cleaning + encoding in forked worker processes (what the stage
does) with one process, tiktoken's `encode_ordinary_batch` thread pool with a plain encode
loop, and `normalize`'s shortcut (a rule runs only on texts its trigger pattern matches) with
running every rule on every text.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import AGNEWS_RULES, ROOT, median_of, real_texts, save, timed

from textclf.core.config import load_params
from textclf.core.paths import Paths
from textclf.serving import encoding as encoding_layer
from textclf.serving.contract import TokenizerInfo
from textclf.serving.text import RULES, normalize
from textclf.serving.tokenizer import load_encoding, pad_id
from textclf.stages import tokenize

FULL_TRAIN_ROWS = 120_000


def every_pass(text: str) -> str:
    """``text`` through every AG News rule, without the trigger-pattern shortcut."""
    for name in AGNEWS_RULES:
        text = RULES[name][0](text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    params = load_params(ROOT / "params.yaml")
    # Tokenization alone: the stage's optional teacher (TF-IDF folds) is timed separately below.
    params = params.model_copy(
        update={"tokenize": params.tokenize.model_copy(update={"teacher_folds": 0})})
    details = params.data.details
    if details is None or details.label_names is None:
        raise SystemExit("params.yaml: data.details.label_names must name AG News's labels")
    label_names = list(details.label_names.values())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        validated = root / "data" / "validated"
        validated.mkdir(parents=True)
        texts = {}
        for split in ("train", "test"):
            texts[split], labels = real_texts(split)
            pd.DataFrame({"label": labels, "text": texts[split]}).to_parquet(
                validated / f"{split}.parquet")
        (validated / "dataset.json").write_text(json.dumps({
            "task": "multiclass", "label_names": label_names, "normalize": AGNEWS_RULES,
            "input_fields": {"text": ["title", "description"], "text_pair": []}}))
        tokenize.run(params, Paths(root))  # warm-up: imports, encoding load
        stage = [timed(lambda: tokenize.run(params, Paths(root)))
                 for _ in range(args.repeats)]

    all_texts = texts["train"] + texts["test"]
    cfg = params.tokenize
    encoding = load_encoding(cfg.encoding)
    # The stage's tokenizer for these single texts (as tokenize.run builds it).
    tok = TokenizerInfo(
        encoding=cfg.encoding, max_length=cfg.max_length, pad_id=pad_id(encoding),
        n_vocab=encoding.n_vocab, lowercase=False, normalize=AGNEWS_RULES,
        head_tokens=(round(cfg.head_share * cfg.max_length) if cfg.truncation == "head_tail"
                     else cfg.max_length),
        pair_separator_id=-1)
    encoders = {
        "clean+encode, forked workers (used)": lambda: tokenize.encode_corpus(
            tok, all_texts, None),
        "clean+encode, one process": lambda: tokenize.encode_corpus(
            tok, all_texts, None, workers=1),
        "plain_loop": lambda: encoding_layer.encode(encoding, tok, all_texts),
        "encode_ordinary_batch_2_threads": lambda: encoding.encode_ordinary_batch(
            all_texts, num_threads=2),
        "encode_ordinary_batch_1_thread": lambda: encoding.encode_ordinary_batch(
            all_texts, num_threads=1),
    }
    encode_times: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(args.repeats):
        for name, fn in encoders.items():
            encode_times[name].append(timed(fn))
    # The texts here are cleaned already, as validate writes them: what the shortcut saves.
    cleaners = {
        "normalize with its shortcut (used)": lambda: [normalize(t, AGNEWS_RULES)
                                                       for t in all_texts],
        "every cleaning pass": lambda: [every_pass(t) for t in all_texts],
    }
    clean_times: dict[str, list[float]] = {name: [] for name in cleaners}
    for _ in range(args.repeats):
        for name, fn in cleaners.items():
            clean_times[name].append(timed(fn))

    n = len(all_texts)
    median = statistics.median(stage)
    save("tokenize_speed", {
        "texts": n,
        "stage_seconds": median_of(stage),
        "stage_texts_per_s": n / median,
        "extrapolated_seconds_for_120k_train_rows": FULL_TRAIN_ROWS / (n / median),
        "encode_seconds": {name: median_of(t) for name, t in encode_times.items()},
        "clean_seconds": {name: median_of(t) for name, t in clean_times.items()},
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    })


if __name__ == "__main__":
    main()
