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


def test_a_damaged_or_half_ca_is_one_line_and_nothing_is_overwritten(tmp_path, capsys):
    import pytest

    out = tmp_path / "credentials"
    out.mkdir()
    (out / "ca.key").write_text("not a key\n")
    (out / "ca.crt").write_text("not a certificate\n")
    for files, message in (({"ca.key", "ca.crt"}, "cannot be read"), ({"ca.key"}, "ca.key is there but ca.crt is not")):
        for name in {"ca.key", "ca.crt"} - files:
            (out / name).unlink()
        with pytest.raises(SystemExit) as stop:
            main([str(out), "--devices", "1"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert sorted(p.name for p in out.iterdir()) == sorted(files)  # nothing made beside a CA it cannot use
    assert (out / "ca.key").read_text() == "not a key\n"
