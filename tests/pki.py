"""A throw-away certificate authority for TLS tests, made with ``cryptography`` in milliseconds.

EC P-256 keys (fast to generate), certificates valid from five minutes ago for a day, written as
PEM files so they are passed to the agent, the broker and the control plane exactly as an
operator would pass them. Client certificates carry the identity as their CN (a device id, or
the control plane's user name), which is how the broker's certificate listeners read it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class CertificateAuthority:
    """A CA in a folder; what it issues is written as ``<name>.pem`` and ``<name>.key``."""

    __test__ = False  # imported as TestCA: not a test class, whatever pytest thinks of the name

    def __init__(self, folder: Path, name: str = "test-ca") -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = (
            self._builder(_name(name), self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = folder / f"{name}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        issuer = self._cert.subject if hasattr(self, "_cert") else subject
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    def _issue(
        self, name: str, extensions: list[x509.ExtensionType], file_name: str = ""
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(_name(name), key.public_key()).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        for ext in extensions:
            builder = builder.add_extension(ext, critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        stem = file_name or name
        issued = Issued(self.folder / f"{stem}.pem", self.folder / f"{stem}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, issued.key)
        return issued

    def server(self, name: str = "server") -> Issued:
        """A server certificate for ``localhost`` and ``127.0.0.1``."""
        return self.issue(name, server=True)

    def client(self, name: str = "client") -> Issued:
        return self.issue(name)

    def issue(self, common_name: str, server: bool = False, file_name: str = "") -> Issued:
        """A certificate for ``common_name``: a server's (for localhost and 127.0.0.1) or a
        client's, written under ``file_name`` (default: the common name)."""
        if server:
            return self._issue(
                common_name,
                [
                    x509.SubjectAlternativeName(
                        [
                            x509.DNSName("localhost"),
                            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        ]
                    ),
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                ],
                file_name,
            )
        return self._issue(
            common_name, [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])], file_name
        )


#: The name the broker tests use.
TestCA = CertificateAuthority
