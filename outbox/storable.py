"""Text PostgreSQL can store: its ``text`` and ``jsonb`` refuse a NUL character and a lone
surrogate, and one such value would make the relay's whole completion batch fail."""

from __future__ import annotations


def storable(text: str, limit: int | None = None) -> str:
    """``text`` with each NUL written as ``\\x00`` and each lone surrogate as its
    ``\\udXXX`` escape; any other text unchanged. With ``limit``, at most that many
    characters, before the escapes and after them."""
    if limit is not None:
        text = text[:limit]
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode()
    return text if limit is None else text[:limit]


def encodable(text: str) -> bool:
    """Whether ``text`` can be sent as UTF-8: it holds no lone surrogate."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
