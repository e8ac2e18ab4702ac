"""Text PostgreSQL can store: its ``text`` and ``jsonb`` refuse a NUL character and a lone
surrogate, and one such value would make the relay's whole completion batch fail."""

from __future__ import annotations


def storable(text: str) -> str:
    """``text`` with each NUL written as ``\\x00`` and each lone surrogate as its
    ``\\udXXX`` escape; any other text unchanged."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode()
    return text
