"""Text normalisation shared by validation (training data) and prediction (user input).

The AG News CSVs carry artefacts of their scraping: HTML entities without their ampersand
(``#39;``), escaped entities (``&lt;b&gt;``), and backslashes where the source had line breaks
(``end of\\the line``) or escaped dollars (``\\$5``). Cleaning them in one place means the model
sees at serving time exactly the kind of text it saw in training.
"""

from __future__ import annotations

import html
import re

# The scrape turned "America&#39;s" into "America #39;s": the space stands where "&" was.
_BARE_APOSTROPHE = re.compile(r" ?(?<!&)#39;")
_BARE_ENTITY = re.compile(r"(?<!&)#(x?[0-9a-fA-F]+);")
_ESCAPED_DOLLAR = re.compile(r"\\(?=\$)")
# A literal "\n" is a newline escape unless a lowercase word goes on ("rebel\negotiators": the
# backslash alone stood for the line break there).
_NEWLINE_ESCAPE = re.compile(r"\\n(?![a-z])")
_TAG = re.compile(r"<[^<>]{0,200}>")
_SPACE = re.compile(r"\s+")
# Every rule above needs one of these characters, or whitespace other than single inner spaces;
# most texts (all of them once validated) have none and skip the seven passes below.
_NEEDS_CLEANING = re.compile(r"[#&<\\]|[^\S ]|  ")


def clean_text(text: str) -> str:
    """Undo the corpus's escapes and collapse whitespace (idempotent on clean text)."""
    if not (_NEEDS_CLEANING.search(text) or text[:1] == " " or text[-1:] == " "):
        return text
    return _clean_all_passes(text)


def _clean_all_passes(text: str) -> str:
    text = _BARE_APOSTROPHE.sub("'", text)
    text = _BARE_ENTITY.sub(r"&#\1;", text)
    text = html.unescape(text)
    text = _TAG.sub(" ", text)
    text = _ESCAPED_DOLLAR.sub("", text)
    text = _NEWLINE_ESCAPE.sub(" ", text)
    text = text.replace("\\", " ")
    return _SPACE.sub(" ", text).strip()


def model_input(text: str, lowercase: bool) -> str:
    """What the tokenizer sees: cleaned text, lower-cased when the model was trained so."""
    cleaned = clean_text(text)
    return cleaned.lower() if lowercase else cleaned


def join_title_description(title: str, description: str) -> str:
    """The model's input text: title and description, cleaned, joined by one space."""
    return clean_text(f"{title} {description}")
