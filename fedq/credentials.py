"""Credentials for a federation of real devices: a CA, the SuperLink's TLS certificate, each device's key pair.

    python -m fedq.credentials OUT --host SERVER_NAME_OR_IP [--host ...] --devices N

writes into ``OUT/``:

    ca.crt, ca.key            a certificate authority of the federation's own (keep ca.key off the devices)
    superlink.crt/.key        the SuperLink's certificate for every --host (and localhost, 127.0.0.1), signed by the CA
    device-K, device-K.pub    device K's key pair (ECDSA P-384, OpenSSH format), for SuperNode authentication

The SuperLink serves TLS with ``--ssl-ca-certfile ca.crt --ssl-certfile
superlink.crt --ssl-keyfile superlink.key --enable-supernode-auth``; a device
trusts it with ``--root-certificates ca.crt`` and proves itself with
``--auth-supernode-private-key device-K --auth-supernode-public-key
device-K.pub``, once its public key is registered (``flwr supernode register
device-K.pub``). Private keys are written readable by their owner only; a file
that exists is never overwritten (a second call adds devices).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import logging
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedq.errors import ConfigError, FedqError
from fedq.logs import configure

log = logging.getLogger("fedq.credentials")  # not __name__: run as __main__

VALID_DAYS = 365
DEVICE_CURVE = ec.SECP384R1()  # Flower takes NIST curves for SuperNode keys


def make_ca(folder: Path, days: int = VALID_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The federation's CA (``ca.crt``, ``ca.key``), made once and read back after."""
    cert_path, key_path = folder / "ca.crt", folder / "ca.key"
    if cert_path.exists() != key_path.exists():
        have, missing = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
        raise ConfigError(f"{have} is there but {missing.name} is not: put it back, or remove {have.name} to make a new "
                          "CA (and then every certificate and registration again)")
    if cert_path.exists():
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (ValueError, TypeError) as err:
            raise ConfigError(f"the CA in {folder} cannot be read ({err}): ca.crt and ca.key must be the PEM files "
                              "python -m fedq.credentials wrote, the key unencrypted") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path} is not an EC private key")
        return cert, key
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedq federation CA")])
    cert = (_builder(name, name, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA384()))
    _write_private(key_path, _pem_private(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def make_server_certificate(folder: Path, hosts: list[str], ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
                            days: int = VALID_DAYS) -> None:
    """``superlink.crt``/``superlink.key``: valid for ``hosts`` (names or IP addresses), localhost and 127.0.0.1."""
    cert_path, key_path = folder / "superlink.crt", folder / "superlink.key"
    if cert_path.exists():
        return
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")])
    cert = (_builder(subject, ca_cert.subject, key.public_key(), days)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    _write_private(key_path, _pem_private(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_device_keys(folder: Path, devices: int) -> list[Path]:
    """``device-K`` and ``device-K.pub`` for K < ``devices`` (kept where they exist); returns the public keys."""
    public = []
    for k in range(devices):
        private_path, public_path = folder / f"device-{k}", folder / f"device-{k}.pub"
        if not private_path.exists():
            key = ec.generate_private_key(DEVICE_CURVE)
            _write_private(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                           serialization.NoEncryption()))
            public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                  serialization.PublicFormat.OpenSSH) + b"\n")
        public.append(public_path)
    return public


def make_credentials(folder: Path, hosts: list[str], devices: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca(folder)
    make_server_certificate(folder, hosts, ca)
    make_device_keys(folder, devices)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)))


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """A private key, readable by its owner only from the moment it exists."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder to write (kept files are not overwritten)")
    parser.add_argument("--host", action="append", default=[], help="a name or IP address the devices reach the SuperLink by")
    parser.add_argument("--devices", type=int, default=0, help="key pairs device-0 ... device-(N-1)")
    args = parser.parse_args(argv)
    if args.devices < 0:
        raise SystemExit(f"error: --devices={args.devices} must be >= 0")
    configure()
    try:
        make_credentials(args.out, args.host, args.devices)
    except FedqError as err:
        log.error(str(err))
        sys.exit(2)
    except OSError as err:
        log.error(f"cannot write the credentials in {args.out}: {err.strerror or err} ({err.filename or args.out})")
        sys.exit(2)
    log.info(f"credentials in {args.out}: ca.crt, superlink.crt/.key, {args.devices} device key pairs")


if __name__ == "__main__":
    main()
