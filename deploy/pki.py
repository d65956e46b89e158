"""The bus's X.509 PKI: a broker CA, the broker's server certificate, one client certificate
per meter, validator, monitoring user, operator, mirror and bridge, and the CRL of revoked ones.

Separate from the manufacturer CA (Ed25519, devcerts): this one only decides who may talk
to the broker. ECDSA P-256, which every TLS stack and MQTT broker accepts. Like the rest of
provisioning it is additive and idempotent: keys are never overwritten, and a certificate
is reissued only when it no longer matches its CA, key, name or host names, or expires
within RENEW_DAYS (or the last third of a shorter lifetime).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.keys import write_file, write_public

CA_DAYS = 36_500  # the CA outlives every certificate it signs; meters are not re-flashed for it
RENEW_DAYS = 30
CLOCK_SKEW = dt.timedelta(hours=1)  # as for devcerts: lagging clocks still accept a new cert
CA_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "spb-energy"),
        x509.NameAttribute(NameOID.COMMON_NAME, "spb-energy broker CA"),
    ]
)


class Authority:
    """The broker CA: its key (secret) and self-signed certificate (public)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.key, self.cert = key, cert

    @classmethod
    def ensure(cls, key_path: Path, cert_path: Path, now: dt.datetime) -> Authority:
        key = ensure_key(key_path)
        cert = _load_cert(cert_path)
        if cert is None or cert.public_key() != key.public_key() or cert.not_valid_after_utc < now:
            cert = (
                _builder(CA_NAME, CA_NAME, key.public_key(), now, CA_DAYS)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=False,
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
                .sign(key, hashes.SHA256())
            )
            _write_cert(cert_path, cert)
        return cls(key, cert)

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issued(self, cert: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def ensure_leaf(
        self, cert_path: Path, key_path: Path, cn: str, now: dt.datetime, days: int, hosts: tuple[str, ...] = ()
    ) -> x509.Certificate:
        """A client certificate for `cn`, or with `hosts` a server certificate for those names."""
        key = ensure_key(key_path)
        cert = _load_cert(cert_path)
        if cert is not None and self._still_good(cert, key, cn, hosts, now):
            return cert
        usage = ExtendedKeyUsageOID.SERVER_AUTH if hosts else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
                CA_NAME,
                key.public_key(),
                now,
                min(days, (self.cert.not_valid_after_utc - now).days),
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        _write_cert(cert_path, cert)
        return cert

    def write_crl(self, path: Path, serials: dict[int, dt.datetime], now: dt.datetime) -> None:
        """The CRL of `serials` (serial -> revocation time). It never lapses before the CA:
        OpenSSL refuses every client once a CRL's next update has passed."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(CA_NAME)
            .last_update(now - CLOCK_SKEW)
            .next_update(self.cert.not_valid_after_utc)
        )
        for serial, when in sorted(serials.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        if not self._crl_lists(path, set(serials)):
            crl = builder.sign(self.key, hashes.SHA256())
            write_public(path, crl.public_bytes(serialization.Encoding.PEM))

    def _crl_lists(self, path: Path, serials: set[int]) -> bool:
        """Whether the CRL at `path` is ours and lists exactly `serials` (then it is kept)."""
        try:
            crl = x509.load_pem_x509_crl(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return False
        return crl.is_signature_valid(self.key.public_key()) and {r.serial_number for r in crl} == serials

    def _still_good(
        self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cn: str, hosts: tuple[str, ...], now: dt.datetime
    ) -> bool:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return (
            self.issued(cert)
            and cert.public_key() == key.public_key()
            and [n.value for n in names] == [cn]
            and _hosts(cert) == set(hosts)
            and cert.not_valid_after_utc - now > min(dt.timedelta(days=RENEW_DAYS), _lifetime(cert) / 3)
        )


def ensure_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The P-256 key at `path` (PEM, 0600), made if missing and never overwritten."""
    if not path.exists():
        new_key = ec.generate_private_key(ec.SECP256R1())
        pem = new_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, pem, 0o600, replace=False)  # a concurrent run's key wins; read it back
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC private key")
    return key


def cert_serial(path: Path) -> int | None:
    cert = _load_cert(path)
    return None if cert is None else cert.serial_number


def _builder(subject: x509.Name, issuer: x509.Name, public_key, now: dt.datetime, days: int) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _lifetime(cert: x509.Certificate) -> dt.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_public(path, cert.public_bytes(serialization.Encoding.PEM))


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _hosts(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
