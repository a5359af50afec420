"""Stage `fetch`: local/file:// and HTTP sources, split files of any format, hash verification
(pins belong to their source), clean failures."""

from __future__ import annotations

import csv
import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_corpus, write_sha256sums
from tests.helpers import charcnn_data, params_dict
from textclf.core.config import Params, params_from_dict
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.stages import fetch


def make_params(overrides: dict[str, Any]) -> Params:
    """params.yaml reading a char-CNN corpus at ``source`` (pins per split -> per file name);
    other keys override the fetch section."""
    overrides = dict(overrides)
    source = overrides.pop("source")
    pins = {f"{split}.csv": pin for split, pin in overrides.pop("sha256", {}).items()}
    return params_from_dict(params_dict(data=charcnn_data(source, pins), fetch=overrides))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def assert_nothing_written(root: Path) -> None:
    data = root / "data"
    leftovers = sorted(p.name for p in data.iterdir()) if data.exists() else []
    assert leftovers == [], f"fetch left {leftovers} behind"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


def test_local_dir_copies_bytes_and_verifies(project: Path, corpus_dir: Path) -> None:
    pins = {split: sha256(corpus_dir / f"{split}.csv") for split in ("train", "test")}
    summary = fetch.run(make_params({"source": str(corpus_dir), "sha256": pins}),
                        Paths(project))
    for split in ("train", "test"):
        out = project / "data" / "raw" / f"{split}.csv"
        assert out.read_bytes() == (corpus_dir / f"{split}.csv").read_bytes()
        assert summary[f"{split}_sha256"] == pins[split]
    assert summary["train_lines"] == 240 and summary["test_lines"] == 60
    assert sorted(p.name for p in (project / "data").iterdir()) == ["raw"]
    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == [
        "source.json", "test.csv", "train.csv"]
    record = json.loads((project / "data" / "raw" / "source.json").read_text())
    assert record == {"source": str(corpus_dir), "files": {
        split: {"name": f"{split}.csv", "sha256": pins[split], "lines": summary[f"{split}_lines"]}
        for split in ("train", "test")}}


def test_relative_source_and_file_url(project: Path) -> None:
    make_corpus(project / "corpus")
    fetch.run(make_params({"source": "corpus"}), Paths(project))
    first = (project / "data" / "raw" / "train.csv").read_bytes()
    fetch.run(make_params({"source": (project / "corpus").as_uri()}), Paths(project))
    assert (project / "data" / "raw" / "train.csv").read_bytes() == first
    assert first == (project / "corpus" / "train.csv").read_bytes()


def test_without_sha256sums_is_fine(project: Path, corpus_dir: Path) -> None:
    (corpus_dir / "SHA256SUMS").unlink()
    fetch.run(make_params({"source": str(corpus_dir)}), Paths(project))
    assert (project / "data" / "raw" / "test.csv").exists()


def test_sha256sums_mismatch_fails_and_keeps_old_output(project: Path, corpus_dir: Path) -> None:
    params = make_params({"source": str(corpus_dir)})
    fetch.run(params, Paths(project))
    old = (project / "data" / "raw" / "train.csv").read_bytes()
    with (corpus_dir / "train.csv").open("a") as fh:
        fh.write('"1","Tampered","row"\n')
    with pytest.raises(TextclfError) as info:
        fetch.run(params, Paths(project))
    message = str(info.value)
    assert "train.csv" in message and "SHA256SUMS" in message and str(corpus_dir) in message
    assert sha256(corpus_dir / "train.csv") in message
    # The old, complete output is untouched and no temporary directory is left beside it.
    assert (project / "data" / "raw" / "train.csv").read_bytes() == old
    assert sorted(p.name for p in (project / "data").iterdir()) == ["raw"]


def test_sha256sums_mismatch_leaves_no_data_raw(project: Path, corpus_dir: Path) -> None:
    write_sha256sums(corpus_dir, ["train.csv", "test.csv"])
    (corpus_dir / "test.csv").write_text('"1","changed","after the sums were written"\n')
    with pytest.raises(TextclfError, match=r"test\.csv.*SHA256SUMS"):
        fetch.run(make_params({"source": str(corpus_dir)}), Paths(project))
    assert_nothing_written(project)


def test_pin_mismatch_names_the_param(project: Path, corpus_dir: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(TextclfError) as info:
        fetch.run(make_params({"source": str(corpus_dir), "sha256": {"test": wrong}}),
                  Paths(project))
    message = str(info.value)
    assert "test.csv" in message and wrong in message and sha256(corpus_dir / "test.csv") in message
    assert "data.details.sha256.test.csv" in message and "params.yaml" in message
    assert_nothing_written(project)


def assert_local_copy_hint(message: str, source: str) -> None:
    assert "\n" not in message, "the error should be one paragraph"
    assert source in message
    assert "data.source" in message and "params.yaml" in message
    assert "dvc exp run -S data.source=" in message


def test_missing_source_dir(project: Path) -> None:
    with pytest.raises(TextclfError) as info:
        fetch.run(make_params({"source": "no/such/agnews"}), Paths(project))
    assert_local_copy_hint(str(info.value), "no/such/agnews")
    assert "does not exist" in str(info.value)
    assert_nothing_written(project)


def test_missing_dvc_import_says_how_to_bring_it(project: Path) -> None:
    # A fresh clone before `dvc update`: the .dvc file is there, its directory is not.
    (project / "data" / "shared").mkdir(parents=True)
    (project / "data" / "shared" / "agnews.dvc").write_text("frozen: true\n")
    with pytest.raises(TextclfError) as info:
        fetch.run(make_params({"source": "data/shared/agnews"}), Paths(project))
    message = str(info.value)
    assert "data/shared/agnews" in message and "does not exist" in message
    assert "dvc update data/shared/agnews.dvc" in message and "\n" not in message
    assert not (project / "data" / "raw").exists()


def test_missing_file_in_source(project: Path, corpus_dir: Path) -> None:
    (corpus_dir / "test.csv").unlink()
    (corpus_dir / "SHA256SUMS").unlink()
    with pytest.raises(TextclfError) as info:
        fetch.run(make_params({"source": corpus_dir.as_uri()}), Paths(project))
    assert_local_copy_hint(str(info.value), corpus_dir.as_uri())
    assert "test.csv was not found" in str(info.value)
    assert_nothing_written(project)


def test_unreachable_host(project: Path) -> None:
    source = "http://127.0.0.1:9/agnews"  # port 9 (discard) refuses connections
    with pytest.raises(TextclfError) as info:
        fetch.run(make_params({"source": source, "timeout_s": 5}), Paths(project))
    assert_local_copy_hint(str(info.value), source)
    assert "offline" in str(info.value)
    assert_nothing_written(project)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``root``; names in ``truncate`` promise more bytes than they send."""

    protocol_version = "HTTP/1.1"
    root: Path
    truncate: set[str]

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:  # fsspec asks for the size before it streams
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        name = self.path.rsplit("/", 1)[-1]
        path = self.root / name
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        cut = name in self.truncate
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body[: len(body) // 2] if cut else body)
            self.wfile.flush()
            # Closing mid-body is what a dropped connection looks like to the client.
            self.close_connection = cut

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_source(corpus_dir: Path) -> Iterator[tuple[str, set[str]]]:
    handler = type("Handler", (_Handler,), {"root": corpus_dir, "truncate": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/agnews", handler.truncate
    finally:
        server.shutdown()
        server.server_close()


def test_http_source(project: Path, corpus_dir: Path, http_source: tuple[str, set[str]]) -> None:
    url, _ = http_source
    fetch.run(make_params({"source": url, "timeout_s": 10}), Paths(project))
    for split in ("train", "test"):
        got = (project / "data" / "raw" / f"{split}.csv").read_bytes()
        assert got == (corpus_dir / f"{split}.csv").read_bytes()


def test_http_404(project: Path, corpus_dir: Path, http_source: tuple[str, set[str]]) -> None:
    url, _ = http_source
    (corpus_dir / "test.csv").unlink()
    (corpus_dir / "SHA256SUMS").unlink()
    with pytest.raises(TextclfError) as info:
        fetch.run(make_params({"source": url, "timeout_s": 10}), Paths(project))
    assert_local_copy_hint(str(info.value), url)
    assert "test.csv" in str(info.value)
    assert_nothing_written(project)


@pytest.mark.parametrize("with_sums", [True, False])
def test_http_truncated_download(project: Path, corpus_dir: Path,
                                 http_source: tuple[str, set[str]], with_sums: bool) -> None:
    url, truncate = http_source
    truncate.add("test.csv")
    pins = {} if with_sums else {"test": sha256(corpus_dir / "test.csv")}
    if not with_sums:
        (corpus_dir / "SHA256SUMS").unlink()
    with pytest.raises(TextclfError, match=r"test\.csv") as info:
        fetch.run(make_params({"source": url, "timeout_s": 10, "sha256": pins}),
                  Paths(project))
    # Either the client notices the short body or the hash check does; both name the file.
    assert re.search(r"sha256|[Cc]ontent.?[Ll]ength|payload", str(info.value))
    assert_nothing_written(project)


def test_pins_belong_to_the_source_they_pin(project: Path, corpus_dir: Path) -> None:
    # AG News's pins (the repo's params) must not block another source: only its SHA256SUMS.
    data = params_dict()["data"]
    data.update(source=str(corpus_dir), text="title", label="class")
    data["details"]["sha256"] = {"train.csv": "0" * 64, "test.csv": "0" * 64}
    fetch.run(params_from_dict(params_dict(data=data)), Paths(project))
    assert (project / "data" / "raw" / "train.csv").read_bytes() == (
        corpus_dir / "train.csv").read_bytes()
    # The same pins, describing this very source, do apply.
    data["details"]["for_source"] = str(corpus_dir)
    with pytest.raises(TextclfError, match=r"data\.details\.sha256\.train\.csv"):
        fetch.run(params_from_dict(params_dict(data=data)), Paths(project))


@pytest.mark.parametrize("names", [("train.jsonl", "test.parquet"), ("train.tsv", "test.csv")])
def test_split_files_are_found_by_name_in_any_format(project: Path, tmp_path: Path,
                                                     names: tuple[str, str]) -> None:
    source = tmp_path / "mixed"
    source.mkdir()
    for name in names:
        (source / name).write_bytes(b"some bytes\n")
    (source / "README.md").write_text("not a split")
    summary = fetch.run(make_params({"source": str(source)}), Paths(project))
    raw = project / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        ["source.json", *(f"{n.split('.')[0]}.{n.split('.')[1]}" for n in names)])
    assert summary["train_file"] == names[0] and summary["test_file"] == names[1]


def test_ambiguous_or_named_split_files(project: Path, tmp_path: Path) -> None:
    source = tmp_path / "two"
    source.mkdir()
    for name in ("train.csv", "train.jsonl", "test.csv", "reviews_dev.tsv"):
        (source / name).write_text("x\n")
    with pytest.raises(TextclfError, match=r"2 files \(train.csv, train.jsonl\).*data.files"):
        fetch.run(make_params({"source": str(source)}), Paths(project))
    assert_nothing_written(project)
    data = charcnn_data(source)
    data["files"] = {"train": "train.jsonl", "test": "reviews_dev.tsv"}
    fetch.run(params_from_dict(params_dict(data=data)), Paths(project))
    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == [
        "source.json", "test.tsv", "train.jsonl"]
    data["files"] = {"train": "train.xlsx", "test": "test.csv"}
    with pytest.raises(TextclfError, match=r"unknown file type '.xlsx'"):
        fetch.run(params_from_dict(params_dict(data=data)), Paths(project))


def _caused(top: BaseException, cause: BaseException) -> BaseException:
    top.__cause__ = cause
    return top


class _HTTPStatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@pytest.mark.parametrize(("exc", "missing"), [
    (FileNotFoundError("local"), True),
    # s3fs: FileNotFoundError translated from a (non-OSError) botocore ClientError
    (_caused(FileNotFoundError("s3"), RuntimeError("NoSuchKey")), True),
    (_caused(FileNotFoundError("http"), _HTTPStatusError(404)), True),
    (_caused(FileNotFoundError("http"), _HTTPStatusError(503)), False),
    # fsspec-http wraps a refused connection or DNS failure in FileNotFoundError too
    (_caused(FileNotFoundError("http"), ConnectionRefusedError(111, "refused")), False),
    (TimeoutError("stalled"), False),
])
def test_missing_is_told_apart_from_unreachable(exc: BaseException, missing: bool) -> None:
    assert fetch._is_missing(exc) is missing
