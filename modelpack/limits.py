"""Limits and text rules both tiers agree on: the one place they are written.

The cloud refuses more than `CLOUD_MAX_TEXTS` texts per call or a text longer than `CLOUD_MAX_TEXT_CHARS`
characters (its defaults; `MAX_TEXTS_PER_CALL` / `MAX_CHARS_PER_TEXT` may lower or raise them per
deployment). The edge chunks its escalations to the first and cuts texts to the second, so it never sends
what the cloud would refuse. The cut costs nothing: the models read at most `max_seq_len` tokens (32-128),
far fewer than 512 characters hold.
"""

from __future__ import annotations

CLOUD_MAX_TEXTS = 32
CLOUD_MAX_TEXT_CHARS = 512


def text_problem(text: str) -> str | None:
    """Why `text` cannot be tokenized, or None. JSON may carry lone UTF-16 surrogates ("\\ud800"), which
    are not Unicode scalar values: they cannot be encoded to UTF-8, and the tokenizer raises on them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains an unpaired surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}"
    return None


def clip_text(text: str, max_chars: int = CLOUD_MAX_TEXT_CHARS) -> str:
    """`text` cut to `max_chars` characters (never inside a surrogate pair: Python strs hold code points)."""
    return text if len(text) <= max_chars else text[:max_chars]
