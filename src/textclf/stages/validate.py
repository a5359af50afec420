"""Stage `validate`: read the raw split files, run a Great Expectations suite, drop leakage.

Reads  data/raw/{train,test}.<ext> (any format of core/readers.py), params data + validate
Writes data/validated/{train,test}.parquet  (text, text_pair for pairs, label: int64 class index,
                                            or a 0/1 list per row for multi-label)
       data/validated/dataset.json          (task, label names, normalisation, input fields)
       metrics/validation.json              (rows, label counts and ratio, lengths, leakage)

The dataset description (params `data`) says which columns hold the text(s) and the label(s);
structural problems (encoding, quoting, a missing column) stop the read with the file and line.
Content rules run as one GX suite per split, chosen by the task; every failed rule is listed with
its offending rows, and nothing is written on failure. Imbalance and text length are measured
always and fail only when a limit is set in params (long texts are truncated at tokenize).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textclf.core.atomic import atomic_dir, write_json
from textclf.core.config import DataConfig, Params, ValidateConfig
from textclf.core.dataset import encoded_labels, label_names, model_table, raw_file
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.core.readers import clip
from textclf.serving.text import normalize

SPLITS = ("train", "test")
_REFETCH = "fix the data at the source and re-run `textclf fetch`"


@dataclass
class Outcome:
    """One checked rule on one split, from GX or computed here, in one reporting shape."""

    split: str
    rule: str
    success: bool
    observed: str = ""
    rows: list[tuple[Any, Any]] = field(default_factory=list)  # (line, offending value)
    fix: str = _REFETCH


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Validate data/raw; on success write data/validated and metrics/validation.json."""
    data, cfg = params.data, params.validate
    details = data.source_details()
    task = data.resolved_task
    files = {split: raw_file(paths.raw, split) for split in SPLITS}
    rules = details.normalize if details else ()
    frames = {split: model_table(files[split], data, lambda t: normalize(t, rules))
              for split in SPLITS}
    frames = {split: _subsample(frame, cfg, split) for split, frame in frames.items()}
    label_map = details.label_names if details else None
    names = label_names(frames["train"], data, label_map)

    key = frames["train"]["text"] + "\x1f" + frames["train"].get("text_pair", "")
    test_keys = set(frames["test"]["text"] + "\x1f" + frames["test"].get("text_pair", ""))
    leaked = key.isin(test_keys)
    n_leaked, share = int(leaked.sum()), float(leaked.mean()) if len(key) else 0.0
    leak = Outcome(
        "train", "train/test leakage (train inputs also in test)",
        share <= cfg.max_leakage_share,
        f"{n_leaked} rows = {share:.2%} of train > validate.max_leakage_share "
        f"{cfg.max_leakage_share:.2%}", list(frames["train"].loc[leaked, "text"].head(5).items()),
        "de-duplicate the source, or raise validate.max_leakage_share in params.yaml")
    if leak.success:
        frames["train"] = frames["train"].loc[~leaked]

    outcomes = _run_suite(frames, data, cfg, names, label_map)
    for split, frame in frames.items():
        if task != "multilabel" and cfg.max_class_ratio:
            outcomes[split].append(_class_balance(split, frame, cfg))
    outcomes["train"].append(leak)
    failed = [o for split in SPLITS for o in outcomes[split] if not o.success]
    if failed:
        raise TextclfError(_report(failed, files, cfg))

    with atomic_dir(paths.validated) as tmp:
        for split, frame in frames.items():
            encoded_labels(frame, data, names, label_map).to_parquet(
                tmp / f"{split}.parquet", index=False)
        write_json(tmp / "dataset.json", {
            "task": task, "label_names": names,
            "normalize": list(details.normalize) if details else [],
            "input_fields": {"text": list(data.text_columns),
                             "text_pair": [data.text_pair] if data.text_pair else []}})
    checks = [o for split in SPLITS for o in outcomes[split]]
    metrics: dict[str, Any] = {"task": task, "labels": len(names)}
    metrics.update({split: split_metrics(frames[split], data, names, label_map)
                    for split in SPLITS})
    metrics.update(success=True, expectations_evaluated=len(checks),
                   expectations_passed=sum(o.success for o in checks),
                   leakage_rows_dropped=n_leaked, leakage_share=round(share, 6))
    write_json(paths.validation_metrics, metrics)
    return {"task": task, "train_rows": len(frames["train"]), "test_rows": len(frames["test"]),
            "leakage_rows_dropped": n_leaked, "expectations_passed": len(checks)}


def _subsample(frame: pd.DataFrame, cfg: ValidateConfig, split: str) -> pd.DataFrame:
    """A seeded share of the rows (stratified by the first label column), capped at max_rows."""
    if cfg.fraction == 1.0 and (cfg.max_rows == 0 or len(frame) <= cfg.max_rows):
        return frame
    keep = round(len(frame) * cfg.fraction)
    keep = min(keep, cfg.max_rows) if cfg.max_rows else keep
    strata = frame[next(c for c in frame.columns if c.startswith("label:"))].fillna("")
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
    order = rng.permutation(len(frame))
    # Round-robin over the classes in a shuffled order: every class keeps its share, and the
    # rare ones keep at least a row while any are left.
    rank = pd.Series(order).groupby(strata.to_numpy()[order]).cumcount().to_numpy()
    share = rank / strata.map(strata.value_counts()).to_numpy()[order]
    picked = order[np.argsort(share, kind="stable")[:max(1, keep)]]
    return frame.iloc[np.sort(picked)]


def _run_suite(frames: dict[str, pd.DataFrame], data: DataConfig, cfg: ValidateConfig,
               names: list[str], label_map: dict | None) -> dict[str, list[Outcome]]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # GX draws tqdm bars on stderr for every metric; noise in a pipeline log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas("raw").add_dataframe_asset("table")
             .add_batch_definition_whole_dataframe("whole"))
    train_values = sorted({v for c in data.label_columns
                           for v in frames["train"][f"label:{c}"] if v is not None})
    outcomes: dict[str, list[Outcome]] = {}
    for split, frame in frames.items():
        suite = context.suites.add(gx.ExpectationSuite(name=split))
        fixes = {}
        for expectation, fix in _rules(split, data, cfg, label_map, train_values):
            fixes[suite.add_expectation(expectation).id] = fix
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=split, data=batch, suite=suite))
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "SUMMARY",
                           "partial_unexpected_count": cfg.report_rows})
        outcomes[split] = [_outcome(split, r, fixes.get(r.expectation_config.id, ""))
                           for r in result.results]
        if data.resolved_task == "multilabel" and split == "train":
            outcomes[split].append(_positives(frame, data))
    return outcomes


def _rules(split: str, data: DataConfig, cfg: ValidateConfig, label_map: dict | None,
           train_values: list[str]) -> list[tuple[Any, str]]:
    import great_expectations.expectations as gxe

    length_fix = ("fix those rows at the source (an empty text cannot be classified), or "
                  "adjust validate.min_text_chars / validate.max_text_chars (0 = off)")
    rules: list[tuple[Any, str]] = [(gxe.ExpectTableRowCountToBeBetween(
        min_value=cfg.min_rows), "fetch more rows, or lower validate.min_rows in params.yaml")]
    for column in ["text", "text_pair"] if data.text_pair else ["text"]:
        rules += [
            (gxe.ExpectColumnValuesToNotBeNull(column=column),
             f"every row needs a value in the column(s) of data.{column}: {_REFETCH}"),
            # At least one character even with no limit set: an empty input is never valid.
            (gxe.ExpectColumnValueLengthsToBeBetween(
                column=column, min_value=max(1, cfg.min_text_chars),
                max_value=cfg.max_text_chars or None), length_fix)]
    for column in (f"label:{c}" for c in data.label_columns):
        rules.append((gxe.ExpectColumnValuesToNotBeNull(column=column),
                      f"every row needs a label: {_REFETCH}"))
        if data.resolved_task == "multilabel":
            rules.append((gxe.ExpectColumnValuesToBeInSet(column=column, value_set=["0", "1"]),
                          "a multi-label column holds 0 or 1 in every row (1 = the label "
                          "applies): fix those values at the source"))
        elif split == "train":
            rules.append((gxe.ExpectColumnUniqueValueCountToBeBetween(
                column=column, min_value=2),
                "a classifier needs at least two classes in the training split: check "
                "data.label names the label column, or fetch rows of the other classes"))
            if label_map:
                rules.append((gxe.ExpectColumnValuesToBeInSet(
                    column=column, value_set=list(label_map)),
                    "every raw label value needs a name in data.details.label_names: add it "
                    "there, or fix the rows"))
                rules.append((gxe.ExpectColumnDistinctValuesToContainSet(
                    column=column, value_set=list(label_map)),
                    "every named class needs training rows: fetch rows of it, or drop it from "
                    "data.details.label_names"))
        else:
            rules.append((gxe.ExpectColumnValuesToBeInSet(column=column, value_set=train_values),
                          "a test label never seen in training cannot be predicted: fix those "
                          "rows, or fetch training rows of that class"))
    return rules


def _positives(frame: pd.DataFrame, data: DataConfig) -> Outcome:
    empty = [c for c in data.label_columns if not (frame[f"label:{c}"] == "1").any()]
    return Outcome("train", "every multi-label column has a positive row", not empty,
                   f"no row has a 1 in {', '.join(empty)}",
                   fix="drop those columns from data.label (nothing can be learned about "
                       "them), or fetch rows where they apply")


def _outcome(split: str, result: Any, fix: str) -> Outcome:
    config, res = result.expectation_config, result.result or {}
    column = config.kwargs.get("column")
    shown = column.removeprefix("label:") if column else None
    rule = f"{config.type}" + (f" (column `{shown}`)" if shown else "")
    # GX 1.x puts a flat dict here, or one dict per metric ID when a metric raised.
    info = result.exception_info or {}
    raised = [i.get("exception_message") for i in (info, *info.values())
              if isinstance(i, dict) and i.get("raised_exception")]
    if raised:
        observed = f"GX could not evaluate it: {raised[0]}"
    elif "partial_missing_list" in res:
        observed = f"values with no rows: {res['partial_missing_list']}"
    elif "unexpected_count" in res and "element_count" in res:
        observed = (f"{res['unexpected_count']} of {res['element_count']} rows unexpected; "
                    f"expected {_expected(config.kwargs)}")
    else:
        observed = f"observed {res.get('observed_value')}; expected {_expected(config.kwargs)}"
    rows = [(item.get("line"), item.get(column))
            for item in res.get("partial_unexpected_index_list") or []]
    return Outcome(split, rule, bool(result.success), observed, rows, fix)


def _expected(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items()
                     if k not in ("batch_id", "column") and v is not None)


def _class_balance(split: str, frame: pd.DataFrame, cfg: ValidateConfig) -> Outcome:
    counts = frame[next(c for c in frame.columns if c.startswith("label:"))].value_counts()
    ratio = float(counts.max() / counts.min()) if len(counts) else 1.0
    return Outcome(
        split, "class balance (largest / smallest class count)", ratio <= cfg.max_class_ratio,
        f"ratio {ratio:.2f} > validate.max_class_ratio {cfg.max_class_ratio} "
        f"(counts {counts.to_dict()})",
        fix="rebalance the source, or raise validate.max_class_ratio (0 = off) in params.yaml")


def split_metrics(frame: pd.DataFrame, data: DataConfig, names: list[str],
                  label_map: dict | None) -> dict[str, Any]:
    chars = frame["text_chars"]
    out: dict[str, Any] = {"rows": len(frame)}
    if data.resolved_task == "multilabel":
        counts = {c: int((frame[f"label:{c}"] == "1").sum()) for c in data.label_columns}
        out["positives"] = counts
        out["labels_per_row"] = round(sum(counts.values()) / max(1, len(frame)), 4)
    else:
        raw = frame[f"label:{data.label}"].value_counts()
        counts = {name: int(raw.get(key, 0))
                  for key, name in (label_map or {n: n for n in names}).items()}
        out["class_counts"] = counts
    present = [n for n in counts.values() if n]
    out["class_ratio"] = round(max(present) / min(present), 4) if present else None
    out["text_chars"] = {"min": int(chars.min()), "median": float(chars.median()),
                         "p95": float(chars.quantile(0.95)), "max": int(chars.max())}
    if data.text_pair:
        pair = frame["text_pair"].map(lambda t: len(t) if t else 0)
        out["text_pair_chars"] = {"median": float(pair.median()), "max": int(pair.max())}
    out["duplicate_texts"] = int(frame["text"].duplicated().sum())
    return out


def _report(failed: list[Outcome], files: dict[str, Path], cfg: ValidateConfig) -> str:
    out = [f"validate: {len(failed)} check(s) failed; nothing was written."]
    for o in failed:
        where = "row" if files[o.split].suffix == ".parquet" else "line"
        out.append(f"- {files[o.split]}: {o.rule}: {o.observed}.")
        for line, value in o.rows[: cfg.report_rows]:
            out.append(f"    {where} {line}: {clip(value)}")
        out.append(f"  To fix: {o.fix}.")
    return "\n".join(out)
