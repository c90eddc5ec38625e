"""Device broker credentials: random passwords, stored only as Mosquitto-compatible hashes.

The hash format is Mosquitto 2's PBKDF2-SHA512 line format, ``$7$<iterations>$<salt b64>$<hash
b64>`` (12-byte salt, 64-byte derived key), so the broker's password file is written straight from
the database and the plaintext exists only in the registration response.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

MOSQUITTO_ITERATIONS = 101  # what mosquitto_passwd uses; the file records it per line
_SALT_BYTES = 12
_KEY_BYTES = 64


def new_password() -> str:
    """A 192-bit random password, URL-safe so it survives any config file."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _KEY_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Check ``password`` against a ``$7$`` line hash (ours or one written by mosquitto_passwd)."""
    try:
        _, kind, iterations, salt_b64, key_b64 = hashed.split("$")
        if kind != "7":
            return False
        salt, key = base64.b64decode(salt_b64), base64.b64decode(key_b64)
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(iterations), len(key))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, key)
