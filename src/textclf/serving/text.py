"""Text normalisation: named rules a dataset description lists, applied in training and serving.

A dataset names its rules (params: ``data.details.normalize``); validate applies them to the
training data, export writes the list into the ONNX metadata, and `Predictor` applies the same
list to user input, so the model sees at serving time exactly the kind of text it trained on.
A client in another language re-implements the rules from their definitions below (and the
model contract in docs/architecture.md). A clean corpus lists none: its text reaches the
tokenizer unchanged.

- ``scrape_entities``: HTML entities that lost their ampersand in a scrape (AG News):
  `` #39;`` -> ``'`` (with the space standing where ``&`` was), ``#NNN;`` / ``#xHH;`` ->
  ``&#NNN;`` / ``&#xHH;`` (for ``html_entities`` to decode).
- ``html_entities``: HTML character references decoded (``&lt;`` -> ``<``, ``&#233;`` ->
  ``é``), as Python's ``html.unescape``.
- ``html_tags``: every ``<...>`` of at most 200 characters without ``<``/``>`` inside
  (``<br />``, ``<p>``) -> one space.
- ``backslash_escapes``: ``\\$`` -> ``$``; ``\\n`` not followed by a lowercase letter -> a space;
  any other backslash -> a space (AG News's escaped line breaks).
- ``whitespace``: runs of whitespace -> one space; leading and trailing whitespace removed.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence

# The scrape turned "America&#39;s" into "America #39;s": the space stands where "&" was.
_BARE_APOSTROPHE = re.compile(r" ?(?<!&)#39;")
_BARE_ENTITY = re.compile(r"(?<!&)#(x?[0-9a-fA-F]+);")
_ESCAPED_DOLLAR = re.compile(r"\\(?=\$)")
# A literal "\n" is a newline escape unless a lowercase word goes on ("rebel\negotiators": the
# backslash alone stood for the line break there).
_NEWLINE_ESCAPE = re.compile(r"\\n(?![a-z])")
_TAG = re.compile(r"<[^<>]{0,200}>")
_SPACE = re.compile(r"\s+")


def _scrape_entities(text: str) -> str:
    return _BARE_ENTITY.sub(r"&#\1;", _BARE_APOSTROPHE.sub("'", text))


def _backslash_escapes(text: str) -> str:
    return _NEWLINE_ESCAPE.sub(" ", _ESCAPED_DOLLAR.sub("", text)).replace("\\", " ")


def _whitespace(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


# name -> (rule, a pattern every text the rule changes matches: most texts skip the rule).
RULES: dict[str, tuple[Callable[[str], str], re.Pattern[str]]] = {
    "scrape_entities": (_scrape_entities, re.compile("#")),
    "html_entities": (html.unescape, re.compile("&")),
    "html_tags": (lambda text: _TAG.sub(" ", text), re.compile("<")),
    "backslash_escapes": (_backslash_escapes, re.compile(r"\\")),
    "whitespace": (_whitespace, re.compile(r"[^\S ]|  |^ | $")),
}


def normalize(text: str, rules: Sequence[str]) -> str:
    """``text`` with each named rule applied in order (unknown names are the caller's error)."""
    for name in rules:
        rule, needed = RULES[name]
        if needed.search(text):
            text = rule(text)
    return text


def model_input(text: str, rules: Sequence[str], lowercase: bool) -> str:
    """What the tokenizer sees: the text normalised, lower-cased when the model was trained so."""
    text = normalize(text, rules)
    return text.lower() if lowercase else text
