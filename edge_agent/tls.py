"""The agent's TLS material, read from the ``tls`` settings and checked once, at start.

gRPC takes PEM bytes and reports every problem with them (a file that is not PEM, a key that
belongs to another certificate) as "Failed to bind to address", which sends an operator looking
at ports. So the files are read and checked here first, and a problem is a ``TlsError`` naming
the file and what is wrong with it. ``edge-agent validate-config`` runs the same check.

Every server of the agent takes its identity from here: the gRPC server builds
``grpc.ssl_server_credentials`` from a ``ServerTls``; an HTTP server added later (the REST
binding of the inference protocol) should load the same ``tls`` section through
``load_server_tls`` and build an ``ssl.SSLContext`` from it (``load_cert_chain``, and with
``client_ca_file`` ``load_verify_locations`` plus ``verify_mode = CERT_REQUIRED``), so both
ports present one certificate and apply one client policy.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge_agent.config import TlsSettings

log = logging.getLogger(__name__)


class TlsError(ValueError):
    """A TLS file cannot be read, is not what it should be, or does not match its pair."""


@dataclass(frozen=True)
class ServerTls:
    """Checked PEM material for a server: certificate chain, its key, the client CA if any."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None

    @property
    def mutual(self) -> bool:
        """Clients must present a certificate signed by ``client_ca``."""
        return self.client_ca is not None


def read_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``; ``TlsError`` naming the setting (``what``) if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TlsError(f"{what} {path} holds no PEM certificate")
    return certs


def load_server_tls(settings: TlsSettings) -> ServerTls:
    """Read and check the server's certificate, key and client CA.

    Checks: each file is readable PEM; the key is unencrypted (gRPC cannot take a passphrase)
    and belongs to the first certificate. A certificate outside its validity period is only
    logged: an edge device may boot with a wrong clock, and refusing to serve until NTP
    answers would take the device down for a problem clients judge for themselves.
    """
    chain = read_file(settings.cert_file, "tls.cert_file")
    key = read_file(settings.key_file, "tls.key_file")
    leaf = _certificates(chain, settings.cert_file, "tls.cert_file")[0]
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise TlsError(
            f"tls.key_file {settings.key_file} is encrypted; the agent needs it unencrypted "
            "(protect it with file permissions)"
        ) from None
    except ValueError as exc:
        raise TlsError(
            f"tls.key_file {settings.key_file} is not a PEM private key: {exc}"
        ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    key_public = private_key.public_key().public_bytes(pem, spki)
    if key_public != leaf.public_key().public_bytes(pem, spki):
        raise TlsError(
            f"tls.key_file {settings.key_file} is not the key of the certificate in "
            f"tls.cert_file {settings.cert_file}"
        )
    now = dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        log.warning(
            "tls.cert_file %s is valid from %s to %s, not now (%s): clients will refuse it",
            settings.cert_file,
            leaf.not_valid_before_utc.isoformat(),
            leaf.not_valid_after_utc.isoformat(),
            now.isoformat(timespec="seconds"),
        )
    client_ca = None
    if settings.client_ca_file is not None:
        client_ca = read_file(settings.client_ca_file, "tls.client_ca_file")
        _certificates(client_ca, settings.client_ca_file, "tls.client_ca_file")
    return ServerTls(chain, key, client_ca)
