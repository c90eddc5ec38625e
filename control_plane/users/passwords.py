"""Password hashing with the standard library's scrypt (memory-hard; no extra dependency).

Stored as ``scrypt$<n>$<r>$<p>$<salt b64>$<key b64>`` so the cost can be raised later and old
hashes still verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

N, R, P = 2**14, 8, 1
_SALT_BYTES = 16
_KEY_BYTES = 32
MIN_LENGTH = 8


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    key = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=_KEY_BYTES)
    b64 = base64.b64encode
    return f"scrypt${N}${R}${P}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    try:
        kind, n, r, p, salt_b64, key_b64 = hashed.split("$")
        if kind != "scrypt":
            return False
        salt, key = base64.b64decode(salt_b64), base64.b64decode(key_b64)
        got = hashlib.scrypt(
            password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(key)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, key)
