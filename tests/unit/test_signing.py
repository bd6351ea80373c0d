"""Sealing and opening signed messages: shared secrets and X.509 certificates."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from conveyor import Celery
from conveyor.exceptions import ImproperlyConfigured
from conveyor.signing import MAGIC, BadSignature, Certificates, SharedSecret, Signing, unsealed

PAYLOAD = b'{"task": "proj.add", "args": [1, 2]}'


def test_a_sealed_message_opens_with_the_same_secret_and_not_with_another() -> None:
    sealed = Signing(SharedSecret(["s3cret"])).seal(PAYLOAD)
    assert sealed.startswith(MAGIC) and sealed.endswith(PAYLOAD)
    assert Signing(SharedSecret(["s3cret"])).open(sealed) == PAYLOAD
    with pytest.raises(BadSignature, match="unknown key, or altered"):
        Signing(SharedSecret(["other"])).open(sealed)
    with pytest.raises(BadSignature, match="unsigned"):
        Signing(SharedSecret(["s3cret"])).open(PAYLOAD)
    assert unsealed(sealed) == PAYLOAD and unsealed(PAYLOAD) == PAYLOAD


def test_keys_rotate_the_old_one_still_verifies_while_the_new_one_signs() -> None:
    old = Signing(SharedSecret(["old"])).seal(PAYLOAD)
    rotating = Signing(SharedSecret(["new", "old"]))
    assert rotating.open(old) == PAYLOAD
    assert Signing(SharedSecret(["new"])).open(rotating.seal(PAYLOAD)) == PAYLOAD
    with pytest.raises(BadSignature):
        Signing(SharedSecret(["new"])).open(old)  # the old key dropped: refused


@given(st.data())
def test_any_change_to_a_sealed_message_is_refused(data: st.DataObject) -> None:
    signing = Signing(SharedSecret(["s3cret"]))
    payload = data.draw(st.binary(max_size=200))
    sealed = bytearray(signing.seal(payload))
    index = data.draw(st.integers(0, len(sealed) - 1))
    sealed[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(BadSignature):
        signing.open(bytes(sealed))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_open(blob: bytes) -> None:
    with pytest.raises(BadSignature):
        Signing(SharedSecret(["s3cret"])).open(MAGIC + blob)


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def make_certificate(directory: Path, name: str, key: PrivateKey) -> tuple[str, str]:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


@pytest.mark.parametrize("algorithm", ["rsa", "ec"])
def test_certificates_sign_and_only_those_in_the_store_verify(tmp_path: Path, algorithm: str) -> None:
    def new_key() -> PrivateKey:
        return rsa.generate_private_key(65537, 2048) if algorithm == "rsa" else ec.generate_private_key(ec.SECP256R1())

    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir()
    outside.mkdir()
    key, cert = make_certificate(store, "worker", new_key())
    stranger_key, stranger_cert = make_certificate(outside, "stranger", new_key())
    ours = Signing(Certificates(key, cert, str(store / "*.pem")))
    assert ours.open(ours.seal(PAYLOAD)) == PAYLOAD
    stranger = Signing(Certificates(stranger_key, stranger_cert, str(tmp_path / "*" / "*.pem")))
    assert stranger.open(ours.seal(PAYLOAD)) == PAYLOAD  # its store trusts both
    with pytest.raises(BadSignature):
        ours.open(stranger.seal(PAYLOAD))  # ours trusts only the store's certificates
    with pytest.raises(BadSignature, match="another kind"):
        ours.open(Signing(SharedSecret(["s"])).seal(PAYLOAD))


def test_setup_security_takes_celerys_arguments_and_missing_parts_are_an_error(tmp_path: Path) -> None:
    key, cert = make_certificate(tmp_path, "app", ec.generate_private_key(ec.SECP256R1()))
    app = Celery("t", broker="memory://")
    assert app.signing is None
    with pytest.raises(ImproperlyConfigured, match="security_key, security_certificate and security_cert_store"):
        app.setup_security(key=key)
    app.setup_security(allowed_serializers=["json"], key=key, cert=cert, store=str(tmp_path / "*.pem"))
    assert app.signing is not None and app.signing.open(app.signing.seal(PAYLOAD)) == PAYLOAD
    with pytest.raises(ImproperlyConfigured, match="security_digest"):
        app.conf.security_digest = "nohash"
        _ = app.signing


def test_the_shared_secret_setting_turns_signing_on_and_is_hidden_from_inspect() -> None:
    from conveyor.worker.control import redact_setting

    app = Celery("t", broker="memory://")
    app.conf.task_signing_key = "s3cret"
    app.conf.task_signing_old_keys = ["old"]
    assert app.signing is not None
    assert redact_setting("task_signing_key", "s3cret") == "********"
    assert redact_setting("task_signing_old_keys", ["old"]) == ["********"]
