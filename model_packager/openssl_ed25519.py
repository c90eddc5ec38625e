"""Ed25519 signature checks through the OpenSSL library the interpreter has already loaded.

Why: an agent checks one signature per install, and both ways it had cost something it keeps
paying for. ``cryptography`` in the agent costs about 7 MB of resident memory for the rest of
the process's life; a child process that loads it and exits costs an interpreter start, about
0.05 CPU seconds per install (a sixth of a 20 MiB fleet install's CPU). Yet every CPython
process already maps OpenSSL's ``libcrypto`` (``hashlib`` is built on it), and OpenSSL has
verified Ed25519 since 1.1.1 -- it is the code ``cryptography`` itself calls. Reached through
``ctypes`` it costs neither memory nor a process: about 0.1 ms per check.

The library is the one already mapped into this process (found in ``/proc/self/maps`` after
importing ``_hashlib``), else the usual sonames. ``load`` checks the binding on RFC 8032's first
test vector, a good and a broken signature, before any package relies on it; where the library,
a symbol or that check is missing, ``load`` returns None and the caller falls back to the child
process (``signature_check.verify_without_cryptography``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: ``EVP_PKEY_ED25519`` (= ``NID_ED25519``) in every OpenSSL since 1.1.1.
_EVP_PKEY_ED25519 = 1087
_SONAMES = ("libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so", "libcrypto.dylib")

# RFC 8032, section 7.1, TEST 1 (empty message).
_TEST_KEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
_TEST_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
    "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


class OpenSslEd25519:
    """``verify(raw_key, signature, message)`` on one loaded ``libcrypto``."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        """Raises ``AttributeError`` when a symbol is missing (an OpenSSL older than 1.1.1)."""
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        self._new_key = _fn(lib.EVP_PKEY_new_raw_public_key, vp, [ctypes.c_int, vp, cp, sz])
        self._free_key = _fn(lib.EVP_PKEY_free, None, [vp])
        self._new_ctx = _fn(lib.EVP_MD_CTX_new, vp, [])
        self._free_ctx = _fn(lib.EVP_MD_CTX_free, None, [vp])
        self._init = _fn(lib.EVP_DigestVerifyInit, ctypes.c_int, [vp, vp, vp, vp, vp])
        self._verify = _fn(lib.EVP_DigestVerify, ctypes.c_int, [vp, cp, sz, cp, sz])
        self._clear_errors = _fn(lib.ERR_clear_error, None, [])

    def verify(self, raw_key: bytes, signature: bytes, message: bytes) -> bool:
        """True only when ``signature`` is ``raw_key``'s Ed25519 signature of ``message``."""
        if len(raw_key) != 32 or len(signature) != 64:
            return False
        key = self._new_key(_EVP_PKEY_ED25519, None, raw_key, len(raw_key))
        if not key:
            self._clear_errors()
            return False
        ctx = self._new_ctx()
        try:
            if not ctx or self._init(ctx, None, None, None, key) != 1:
                return False
            return self._verify(ctx, signature, len(signature), message, len(message)) == 1
        finally:
            # A refused signature leaves OpenSSL errors on this thread's queue; hashlib and ssl
            # share the library and must not find them.
            self._clear_errors()
            if ctx:
                self._free_ctx(ctx)
            self._free_key(key)


def _fn(f: Any, restype: object, argtypes: list[object]) -> Any:
    """A C function of the library with its prototype set (ctypes would guess ``int`` else)."""
    f.restype = restype
    f.argtypes = argtypes
    return f


def _mapped_libcrypto() -> str | None:
    """The path of the ``libcrypto`` this process has mapped (hashlib's), if any."""
    import _hashlib  # noqa: F401  (maps libcrypto, if the interpreter was built with it)

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if "/libcrypto" in path:
            return path.strip()
    return None


@functools.cache
def load() -> OpenSslEd25519 | None:
    """The binding, checked on RFC 8032's test vector; None where it cannot be had here."""
    candidates = [p for p in (_mapped_libcrypto(),) if p] + list(_SONAMES)
    for name in candidates:
        try:
            binding = OpenSslEd25519(ctypes.CDLL(name))
        except (OSError, AttributeError):
            continue
        broken = bytes([_TEST_SIG[0] ^ 1]) + _TEST_SIG[1:]
        if binding.verify(_TEST_KEY, _TEST_SIG, b"") and not binding.verify(_TEST_KEY, broken, b""):
            return binding
        log.warning("%s does not check Ed25519 signatures as expected; not used", name)
    return None
