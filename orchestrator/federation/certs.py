"""The consortium's keys: a CA, the SuperLink's TLS certificate, one authentication key pair per hospital.

    ca.pem / ca.key                 the consortium's certificate authority (keep ca.key offline)
    superlink.pem / superlink.key   the SuperLink's TLS certificate; its SANs must cover every address
                                    the hospitals dial (and 127.0.0.1, which the SuperLink dials itself)
    hospitals/NAME / NAME.pub       a hospital's EC P-384 key pair in OpenSSH format: the SuperLink
                                    admits a SuperNode only if its public key was registered

Made with `cryptography` (no openssl or ssh-keygen needed); `consortium federation certs` and
deploy/federation/make-certs.sh call `make_certs`.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CertFiles:
    ca: Path
    ca_key: Path
    cert: Path
    key: Path
    hospitals: dict[str, tuple[Path, Path]]   # name -> (private key, public key)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _name(common: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _san(entry: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        return x509.DNSName(entry)


def make_certs(directory: Path, sans: list[str], hospitals: list[str], days: int = 365) -> CertFiles:
    """A CA, a SuperLink certificate for `sans` (127.0.0.1 and localhost always added) and a key
    pair per hospital, written under `directory`. Existing hospital keys are kept (re-running adds
    new hospitals without invalidating registrations); the CA and certificate are made afresh only
    when missing."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    files = CertFiles(directory / "ca.pem", directory / "ca.key", directory / "superlink.pem",
                      directory / "superlink.key", {})
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    if files.ca.exists() and files.ca_key.exists():
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_cert = (x509.CertificateBuilder().subject_name(_name("Consortium CA")).issuer_name(_name("Consortium CA"))
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .sign(ca_key, hashes.SHA384()))
        _write(files.ca_key, ca_key.private_bytes(pem, pkcs8, plain), private=True)
        _write(files.ca, ca_cert.public_bytes(pem))
    names = list(dict.fromkeys([*sans, "127.0.0.1", "localhost"]))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    _write(files.key, key.private_bytes(pem, pkcs8, plain), private=True)
    _write(files.cert, cert.public_bytes(pem))
    for name in hospitals:
        files.hospitals[name] = hospital_key(directory / "hospitals", name)
    return files


def hospital_key(directory: Path, name: str) -> tuple[Path, Path]:
    """(private, public) OpenSSH EC P-384 key pair of hospital `name`; made once, then kept."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public = directory / name, directory / f"{name}.pub"
    if private.exists() and public.exists():
        return private, public
    key = ec.generate_private_key(ec.SECP384R1())
    _write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()), private=True)
    _write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return private, public
