"""Stage `fetch`: copy or download the raw AG News CSVs, verify their sha256 -> data/raw/.

Reads  params.fetch.source: a local directory, a file:// URL or any fsspec URL (https://, s3://)
       holding train.csv and test.csv (char-CNN CSV) and, optionally, SHA256SUMS
Writes data/raw/{train,test}.csv

Every file is hashed while it streams to disk and checked against the pin in params.yaml and
against the source's SHA256SUMS. Everything is written into a temporary sibling of data/raw that
replaces it only once both splits are complete and verified, so a failed or truncated download
never leaves a file behind. Without subsampling the outputs are byte-for-byte the source files.
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from textclf.core.atomic import atomic_dir
from textclf.core.config import FetchConfig, Params
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths

SPLITS = ("train", "test")
SUMS_NAME = "SHA256SUMS"
_CHUNK = 1 << 20
_LOCAL_COPY_HINT = (
    "point the stage at a local copy: set fetch.source in params.yaml to a directory holding "
    "train.csv and test.csv (this repo's default is ../shared/data/agnews), or run "
    "`dvc exp run -S fetch.source=/path/to/agnews`."
)


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Fetch both splits into ``paths.raw``; return row counts and source sha256 per split."""
    cfg = params.fetch
    source = _Source(cfg, paths.root)
    # The small checksum file goes first, so an unreachable source fails before any big download.
    sums = _parse_sums(source.read_optional(SUMS_NAME))
    summary: dict[str, Any] = {}
    with atomic_dir(paths.raw) as tmp_dir:
        for split in SPLITS:
            name = f"{split}.csv"
            download = tmp_dir / f".{name}.download"
            digest, lines = source.download(name, download)
            _verify(split, name, digest, cfg, sums, source.label)
            out = tmp_dir / name
            if cfg.fraction == 1.0 and cfg.max_rows_per_class == 0:
                download.rename(out)
            else:
                lines = _subsample(download, out, cfg, split)
                download.unlink()
            summary[f"{split}_rows"] = lines
            summary[f"{split}_sha256"] = digest
    return summary


class _Source:
    """Where the files come from: a local directory or an fsspec URL, behind one interface."""

    def __init__(self, cfg: FetchConfig, root: Path) -> None:
        self.timeout_s = cfg.timeout_s
        self.is_url = "://" in cfg.source
        if self.is_url:
            self.base = cfg.source.rstrip("/")
            self.label = cfg.source
        else:
            path = Path(cfg.source).expanduser()
            self.base = str(path if path.is_absolute() else root / path)
            self.label = cfg.source if self.base == cfg.source else f"{cfg.source} ({self.base})"
            if not Path(self.base).is_dir():
                what = "is not a directory" if Path(self.base).exists() else "does not exist"
                raise TextclfError(
                    f"fetch: the source directory {self.label} {what}. To fix it, "
                    f"{_LOCAL_COPY_HINT}"
                )

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        if not self.is_url:
            with open(Path(self.base) / name, "rb") as fh:
                yield fh
            return
        import fsspec

        url = f"{self.base}/{name}"
        options: dict[str, Any] = {}
        open_kwargs: dict[str, Any] = {}
        if url.startswith(("http://", "https://")):
            import aiohttp

            # No total limit (a big file on a slow link is fine); fail when the connection stalls.
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s
            )
            options["client_kwargs"] = {"timeout": timeout}
            # block_size=0 streams the body instead of issuing cached range requests.
            open_kwargs["block_size"] = 0
        fs, path = fsspec.core.url_to_fs(url, **options)
        with fs.open(path, "rb", **open_kwargs) as fh:
            yield fh

    def read_optional(self, name: str) -> bytes | None:
        """The whole (small) file, or None if the source has no such file."""
        try:
            with self.open(name) as fh:
                return fh.read()
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise self._error(name, exc) from exc

    def download(self, name: str, target: Path) -> tuple[str, int]:
        """Stream ``name`` to ``target`` while hashing; return (sha256 hex, line count)."""
        digest = hashlib.sha256()
        lines, last = 0, b"\n"
        try:
            with self.open(name) as src, open(target, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    lines += chunk.count(b"\n")
                    last = chunk[-1:]
                    dst.write(chunk)
        except Exception as exc:
            raise self._error(name, exc) from exc
        # A last line without its newline is still a row.
        return digest.hexdigest(), lines + (last != b"\n")

    def _error(self, name: str, exc: BaseException) -> TextclfError:
        what = f"{name} was not found there" if _is_missing(exc) else f"reading {name} failed"
        return TextclfError(
            f"fetch: could not get the data from {self.label}: {what} ({_short(exc)}). "
            f"If this machine is offline or the host is unreachable, {_LOCAL_COPY_HINT}"
        )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_missing(exc: BaseException) -> bool:
    """True if the file is absent, as opposed to the source being unreachable.

    fsspec's HTTP backend turns every failure (refused connection included) into
    FileNotFoundError, so look at the causes: an HTTP status decides if there is one, and a
    network-level OSError (refused, DNS, timeout) underneath means "unreachable", not "absent".
    """
    chain = list(_causes(exc))
    for link in chain:
        status = getattr(link, "status", None)
        if isinstance(status, int):
            return status in (404, 410)
    return isinstance(chain[0], FileNotFoundError) and not any(
        isinstance(link, OSError) and not isinstance(link, FileNotFoundError)
        for link in chain[1:]
    )


def _short(exc: BaseException) -> str:
    # The root cause says the most ("Connect call failed", "404 Not Found"), the wrapper the least.
    root = list(_causes(exc))[-1]
    text = " ".join(str(root).split())
    text = f"{type(root).__name__}: {text}" if text else type(root).__name__
    return text if len(text) <= 200 else text[:197] + "..."


_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def _parse_sums(data: bytes | None) -> dict[str, str]:
    """sha256sum output ("<hex>  <name>" or "<hex> *<name>") -> {file name: hex}."""
    if data is None:
        return {}
    sums = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        match = _SUMS_LINE.match(line.strip())
        if match:
            sums[match.group(2).strip().removeprefix("./")] = match.group(1).lower()
    return sums


def _verify(split: str, name: str, actual: str, cfg: FetchConfig, sums: dict[str, str],
            source: str) -> None:
    problems = []
    pinned = cfg.sha256.get(split)
    if pinned and pinned.lower() != actual:
        problems.append(
            f"params.yaml pins fetch.sha256.{split} = {pinned.lower()}. If the source "
            f"legitimately changed, update fetch.sha256.{split} in params.yaml to the new hash"
        )
    listed = sums.get(name)
    if listed and listed != actual:
        problems.append(
            f"{SUMS_NAME} at the source lists {listed}. If the file legitimately changed, "
            f"the source's {SUMS_NAME} is stale and needs fixing there"
        )
    if problems:
        raise TextclfError(
            f"fetch: {name} from {source} has sha256 {actual}, but " + "; and ".join(problems)
            + ". Otherwise the copy is corrupt or truncated: re-run `textclf fetch` to download "
            "it again. data/raw was left as it was."
        )


def _subsample(src: Path, dst: Path, cfg: FetchConfig, split: str) -> int:
    """Keep a seeded, stratified share of each class, in the original row order; return rows.

    Rows are re-written with every field quoted, as the canonical files are. surrogateescape
    carries any undecodable bytes through unchanged for the validate stage to report.
    """
    where = f"fetch: {split}.csv from {cfg.source}"
    fix = ("Fix the source file, or set fetch.fraction: 1.0 and fetch.max_rows_per_class: 0 to "
           "copy it unchanged (validate then reports every bad row).")
    rows: list[list[str]] = []
    by_class: dict[int, list[int]] = {}
    with open(src, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.reader(fh)
        start = 1  # first physical line of the next record (quoted fields may span lines)
        try:
            for row in reader:
                if row:
                    label = row[0].strip()
                    if not re.fullmatch(r"[+-]?\d+", label):
                        raise TextclfError(
                            f"{where}, line {start}: the class field is {label[:40]!r}, not an "
                            f"integer, so rows cannot be sampled per class. {fix}"
                        )
                    by_class.setdefault(int(label), []).append(len(rows))
                    rows.append(row)
                start = reader.line_num + 1
        except csv.Error as exc:
            raise TextclfError(
                f"{where}, line {reader.line_num}: not valid CSV ({exc}), so rows cannot be "
                f"sampled per class. {fix}"
            ) from None
    rng = random.Random(f"{cfg.seed}:{split}")
    kept: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        # Rounded share, but never drop a class entirely.
        k = max(1, round(len(members) * cfg.fraction))
        if cfg.max_rows_per_class:
            k = min(k, cfg.max_rows_per_class)
        kept.extend(rng.sample(members, k))
    kept.sort()
    with open(dst, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerows(rows[i] for i in kept)
    return len(kept)
