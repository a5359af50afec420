"""A client in another language, following the model contract, against `textclf predict`.

    python benchmarks/contract_client.py [--model models/model.onnx]

Scores the shipped model on the raw test rows of its own dataset (data.source of params.yaml,
read as the data section says, before any normalisation) three ways, all through ONNX Runtime:
`Predictor.predict` (the reference), a client that builds ids from the documented contract alone
(docs/architecture.md: normalisation rules from the metadata, tiktoken, truncation;
re-implemented here without textclf's serving code), and a client that skips the normalisation
(raw text -> ids, the contract as it read before the rules were in the metadata). Reports
accuracy of each and how many rows' ids differ from the reference.
"""

from __future__ import annotations

import argparse
import html
import json
import re

import numpy as np
from common import ROOT, save


def contract_rules() -> dict:
    """The contract's rule definitions, written again from the text (not imported)."""
    tag, space = re.compile(r"<[^<>]{0,200}>"), re.compile(r"\s+")
    return {
        "scrape_entities": lambda t: re.sub(r"(?<!&)#(x?[0-9a-fA-F]+);", r"&#\1;",
                                            re.sub(r" ?(?<!&)#39;", "'", t)),
        "html_entities": html.unescape,
        "html_tags": lambda t: tag.sub(" ", t),
        "backslash_escapes": lambda t: re.sub(r"\\n(?![a-z])", " ",
                                              re.sub(r"\\(?=\$)", "", t)).replace("\\", " "),
        "whitespace": lambda t: space.sub(" ", t).strip(),
    }


def client_ids(meta: dict, encoding, texts: list[str], normalise: bool) -> list[list[int]]:
    rules = contract_rules()
    n, head = int(meta["max_length"]), int(meta["head_tokens"])
    out = []
    for text in texts:
        if normalise:
            for name in json.loads(meta["normalize"]):
                text = rules[name](text)
        if meta["lowercase"] == "true":
            text = text.lower()
        ids = encoding.encode_ordinary(text)
        if len(ids) > n:
            ids = ids[:head] + (ids[len(ids) - (n - head):] if n > head else [])
        out.append(ids)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "model.onnx"))
    args = parser.parse_args()

    from textclf.core.config import load_params
    from textclf.core.dataset import encoded_labels, label_names, model_table
    from textclf.serving.encoding import pad
    from textclf.serving.predictor import Predictor

    params = load_params(ROOT / "params.yaml")
    data = params.data
    details = data.source_details()
    predictor = Predictor(args.model, providers=["CPUExecutionProvider"])
    meta = predictor.session.get_modelmeta().custom_metadata_map
    if predictor.metadata.tokenizer.pairs or predictor.task == "multilabel":
        raise SystemExit("this comparison is written for single-text, single-label models")
    source = (ROOT / data.source) if "://" not in data.source else None
    raw_test = next(source.glob("test.*"))
    raw = model_table(raw_test, data, lambda t: t)  # joined columns, not normalised
    label_map = details.label_names if details else None
    train_names = label_names(model_table(next(source.glob("train.*")), data, lambda t: t), data,
                              label_map)
    truth = encoded_labels(raw, data, train_names, label_map)["label"].to_numpy()
    texts = raw["text"].tolist()

    def accuracy(ids: list[list[int]]) -> float:
        logits = np.concatenate([predictor.logits(pad(ids[i:i + 64], predictor.pad_id))
                                 for i in range(0, len(ids), 64)])
        return float((logits.argmax(1) == truth).mean())

    reference = [names.index(r["label"]) for names in [predictor.label_names]
                 for r in predictor.predict(texts)]
    ref_ids = [list(row[row != predictor.pad_id]) for row in
               (predictor.encode([t]) [0] for t in texts)]
    results = {}
    for name, normalise in (("contract client (rules applied)", True),
                            ("client skipping the normalisation", False)):
        ids = client_ids(meta, predictor.encoding, texts, normalise)
        results[name] = {"accuracy": round(accuracy(ids), 6),
                         "rows_with_other_ids": sum(a != b for a, b in zip(ids, ref_ids,
                                                                            strict=True))}
    results["textclf predict"] = {"accuracy": round(float(np.mean(np.asarray(reference)
                                                                   == truth)), 6)}
    save("contract_client", {"model": args.model, "dataset": data.source,
                             "normalize": json.loads(meta["normalize"]), "test_rows": len(texts),
                             "results": results})


if __name__ == "__main__":
    main()
