"""The federation's credentials (fedq.credentials): a CA, the SuperLink's certificate for its names, device key pairs."""

from __future__ import annotations

import ipaddress
import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedq.credentials import main


def test_the_superlink_certificate_is_signed_by_the_ca_for_its_names_and_device_keys_are_private(tmp_path):
    out = tmp_path / "credentials"
    main([str(out), "--host", "fl.example.org", "--host", "10.0.0.7", "--devices", "2"])
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "superlink.crt").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("127.0.0.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for k in (0, 1):
        private = load_ssh_private_key((out / f"device-{k}").read_bytes(), password=None)
        public = load_ssh_public_key((out / f"device-{k}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
    for private_file in ("ca.key", "superlink.key", "device-0", "device-1"):
        assert stat.S_IMODE((out / private_file).stat().st_mode) == 0o600, private_file
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    main([str(out), "--devices", "3"])  # a second call adds device-2 and overwrites nothing
    assert {p.name for p in out.iterdir()} == set(kept) | {"device-2", "device-2.pub"}
    assert all((out / name).read_bytes() == data for name, data in kept.items())
