"""Referral codes: short, unambiguous when read aloud, unguessable."""

from __future__ import annotations

import re
import secrets

# No 0/O, 1/I/L: nothing a person can misread or mishear. 31 symbols; 8 of them give 31**8 ~ 8.5e11
# codes, so with even a million users a random guess hits one in ~850,000 tries.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
_SEPARATORS = re.compile(r"[\s\-_]+")


def generate_code(length: int = 8) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def normalize_code(raw: str) -> str:
    """What a person typed or the app sent, as stored: upper case, without spaces or dashes."""
    return _SEPARATORS.sub("", raw).upper()


def looks_like_code(code: str) -> bool:
    return bool(code) and all(c in ALPHABET for c in code)
