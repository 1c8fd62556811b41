"""A per-host certificate authority and server certificate for forgather's HTTPS endpoints.

``forgather tls init`` writes, into one directory (default ``~/.config/forgather/tls``):

* ``ca.crt`` / ``ca.key``: a CA made for this host (kept when it exists, so clients that trust it go
  on trusting certificates renewed later; ``--force`` makes a new one);
* ``server.crt`` / ``server.key``: a server certificate signed by that CA for the host's names and
  addresses (its hostname, FQDN, ``localhost``, every interface address, and any ``--name``).

Clients trust ``ca.crt`` (``curl --cacert``, ``SSL_CERT_FILE`` for Python clients); the server takes
``--tls-cert server.crt --tls-key server.key``. Keys are EC P-256, written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from forgather.errors import ForgatherError

CA_DAYS = 3650
SERVER_DAYS = 825


class TLSError(ForgatherError):
    """Certificates cannot be made or read."""


@dataclass
class TLSFiles:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"


def default_directory() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("forgather")) / "tls"


def host_names() -> list[str]:
    """This host's hostname, FQDN and ``localhost``."""
    names = [socket.gethostname(), socket.getfqdn(), "localhost"]
    return list(dict.fromkeys(n for n in names if n))


def host_addresses() -> list[str]:
    """Every address of this host's interfaces (loopback included)."""
    import psutil

    found = ["127.0.0.1", "::1"]
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                found.append(address.address.split("%", 1)[0])
    return list(dict.fromkeys(found))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_bytes(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(files: TLSFiles):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise TLSError(
            f"{files.directory}: cannot read the CA ({error}); pass --force to make a new one"
        ) from None
    return cert, key


def _make_ca(files: TLSFiles, now: datetime.datetime):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "forgather"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"forgather CA for {socket.gethostname()}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(files.ca_key, _key_bytes(key))
    _write_public(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _subject_names(names: list[str]) -> list:
    from cryptography import x509

    entries, seen = [], set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def init_tls(
    directory: str | Path | None = None,
    extra_names: list[str] | None = None,
    force: bool = False,
    days: int = SERVER_DAYS,
) -> tuple[TLSFiles, list[str], bool]:
    """Make (or renew) the server certificate; returns (files, names it covers, CA made now)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if days < 1:
        raise TLSError(f"--days must be at least 1, got {days}")
    files = TLSFiles(Path(directory).expanduser() if directory else default_directory())
    try:
        files.directory.mkdir(parents=True, exist_ok=True)
        files.directory.chmod(0o700)
    except OSError as error:
        raise TLSError(f"{files.directory}: {error.strerror or error}") from None
    now = datetime.datetime.now(datetime.UTC)
    made_ca = force or not (files.ca_cert.exists() and files.ca_key.exists())
    ca_cert, ca_key = _make_ca(files, now) if made_ca else _load_ca(files)
    names = [*host_names(), *host_addresses(), *(extra_names or [])]
    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "forgather"),
                    x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname()),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(files.server_key, _key_bytes(key))
    _write_public(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    return files, list(dict.fromkeys(names)), made_ca
