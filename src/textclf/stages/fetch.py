"""Stage `fetch`: copy or download the split files of data.source, verify their sha256 -> data/raw/.

Reads  params.data.source: a local directory, a file:// URL or any fsspec URL (https://, s3://)
       holding the train and test files (data.files, or train.* / test.* found there) and,
       optionally, SHA256SUMS
Writes data/raw/train.<ext>, data/raw/test.<ext> (byte-for-byte the source files)

Every file is hashed while it streams to disk and checked against the pins of data.details
(only while they describe this source) and against the source's SHA256SUMS. Everything is written
into a temporary sibling of data/raw that replaces it only once both splits are complete and
verified, so a failed or truncated download never leaves a file behind.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from textclf.core.atomic import atomic_dir, write_json
from textclf.core.config import DataConfig, Params
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.core.readers import FORMATS, format_of

SPLITS = ("train", "test")
SUMS_NAME = "SHA256SUMS"
_CHUNK = 1 << 20
_LOCAL_COPY_HINT = (
    "point the stage at a local copy: set data.source in params.yaml to a directory holding "
    "the train and test files (this repo's default is data/shared/agnews, a DVC import of "
    "../shared/data/agnews), or run "
    "`dvc exp run -S data.source=/path/to/data`."
)


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Fetch both splits into ``paths.raw``; return row counts and source sha256 per split."""
    data = params.data
    source = _Source(data.source, params.fetch.timeout_s, paths.root)
    names = _split_files(data, source)
    for name in names.values():
        format_of(Path(name))  # an unknown extension fails before any download
    # The small checksum file goes first, so an unreachable source fails before any big download.
    sums = _parse_sums(source.read_optional(SUMS_NAME))
    details = data.source_details()
    pins = details.sha256 if details else {}
    summary: dict[str, Any] = {}
    files: dict[str, dict[str, Any]] = {}
    with atomic_dir(paths.raw) as tmp_dir:
        for split, name in names.items():
            out = tmp_dir / f"{split}{Path(name).suffix.lower()}"
            digest, lines = source.download(name, out)
            _verify(name, digest, pins, sums, source.label)
            summary[f"{split}_file"] = name
            summary[f"{split}_lines"] = lines
            summary[f"{split}_sha256"] = digest
            files[split] = {"name": name, "sha256": digest, "lines": lines}
        # Provenance for the model card (export): where each split came from, its exact bytes.
        write_json(tmp_dir / paths.raw_source.name, {"source": data.source, "files": files})
    return summary


def _split_files(data: DataConfig, source: _Source) -> dict[str, str]:
    """data.files, or the one train.* / test.* of a supported format in a local source."""
    if data.files is not None:
        return {split: data.files[split] for split in SPLITS}
    if source.is_url:
        return {split: f"{split}.csv" for split in SPLITS}
    found = {}
    for split in SPLITS:
        matches = sorted(p.name for p in Path(source.base).iterdir()
                         if p.stem == split and p.suffix.lower() in FORMATS)
        if len(matches) != 1:
            what = "no file" if not matches else f"{len(matches)} files ({', '.join(matches)})"
            raise TextclfError(
                f"fetch: {source.label} holds {what} named {split}.<ext> with a supported "
                f"extension ({', '.join(FORMATS)}). Name the files in params.yaml: "
                f"data.files: {{train: NAME, test: NAME}} (or `dvc exp run -S "
                f"data.files.{split}=NAME`)."
            )
        found[split] = matches[0]
    return found


class _Source:
    """Where the files come from: a local directory or an fsspec URL, behind one interface."""

    def __init__(self, source: str, timeout_s: float, root: Path) -> None:
        self.timeout_s = timeout_s
        self.is_url = "://" in source
        if self.is_url:
            self.base = source.rstrip("/")
            self.label = source
        else:
            path = Path(source).expanduser()
            self.base = str(path if path.is_absolute() else root / path)
            self.label = source if self.base == source else f"{source} ({self.base})"
            if not Path(self.base).is_dir():
                what = "is not a directory" if Path(self.base).exists() else "does not exist"
                tracked = Path(f"{self.base}.dvc").is_file()
                raise TextclfError(
                    f"fetch: the source directory {self.label} {what}. To fix it, "
                    + (f"bring it from DVC's cache: `dvc update {source}.dvc` (a fresh clone: "
                       "`dvc update --recursive data/shared`), or `dvc pull`." if tracked
                       else _LOCAL_COPY_HINT)
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


def _verify(name: str, actual: str, pins: dict[str, str], sums: dict[str, str],
            source: str) -> None:
    problems = []
    pinned = pins.get(name)
    if pinned and pinned.lower() != actual:
        problems.append(
            f"params.yaml pins data.details.sha256.{name} = {pinned.lower()}. If the source "
            "legitimately changed, update that pin in params.yaml to the new hash"
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
