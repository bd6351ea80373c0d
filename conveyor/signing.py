"""Signed messages: only those who hold a key can enqueue tasks or steer workers.

Anyone who can write to the broker can otherwise enqueue any registered task,
revoke tasks or change rate limits. With signing on, every task message,
remote-control command and reply, revocation and run-time rate limit is
sealed: the bytes as they were encoded, behind a signature and the id of the
key that made it. A worker opens a message before decoding anything of it:
one unsigned, signed with an unknown key or altered goes to the dead letters
with the reason "bad signature", and forged control state is ignored.

Two ways to sign, chosen by the settings:

- a shared secret, HMAC-SHA256: `task_signing_key` signs and verifies;
  `task_signing_old_keys` still verify (rotate by moving the old key there,
  deploying, then dropping it);
- X.509, as Celery's `app.setup_security()`: `security_key` (a PEM private
  key file, `security_key_password` if it is encrypted) and
  `security_certificate` sign; `security_cert_store` (a glob of PEM
  certificates) lists the certificates whose messages are accepted;
  `security_digest` names the hash (default sha256). Needs
  `pip install 'conveyor[security]'`.

The seal: MAGIC, the signer's kind and key id, the signature, the payload.
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.exceptions import DecodeError, ImproperlyConfigured
from conveyor.extras import requires

if TYPE_CHECKING:
    from conveyor.config import Settings

MAGIC = b"\x00conveyor-signed\x01"
_HEADER = struct.Struct(">cBH")  # kind, key id length, signature length


class BadSignature(DecodeError):
    """A message or a piece of control state whose seal does not verify."""


class Keys(Protocol):
    kind: bytes
    key_id: bytes

    def sign(self, payload: bytes) -> bytes: ...

    def verify(self, key_id: bytes, signature: bytes, payload: bytes) -> bool: ...


def _hmac_id(secret: bytes) -> bytes:
    return hashlib.sha256(b"conveyor key id\x00" + secret).digest()[:8]


class SharedSecret:
    """HMAC-SHA256 with the first key; any of the keys verifies."""

    kind = b"h"

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        secrets = [k.encode() if isinstance(k, str) else bytes(k) for k in keys]
        if not secrets or not all(secrets):
            raise ImproperlyConfigured("task_signing_key must be a non-empty secret")
        self._secret = secrets[0]
        self.key_id = _hmac_id(self._secret)
        self._by_id = {_hmac_id(s): s for s in secrets}

    def sign(self, payload: bytes) -> bytes:
        return hmac.digest(self._secret, payload, "sha256")

    def verify(self, key_id: bytes, signature: bytes, payload: bytes) -> bool:
        secret = self._by_id.get(key_id)
        return secret is not None and hmac.compare_digest(hmac.digest(secret, payload, "sha256"), signature)


class Certificates:
    """A private key and its certificate sign; the certificates of the store verify."""

    kind = b"x"

    def __init__(self, key: str, certificate: str, store: str, digest: str = "sha256", password: str | None = None):
        with requires("security", "message signing with certificates"):
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization

        self._hashes = hashes
        try:
            self._digest = getattr(hashes, digest.upper().replace("-", ""))()
        except AttributeError:
            raise ImproperlyConfigured(f"security_digest {digest!r} is not a hash cryptography knows") from None
        try:
            with open(key, "rb") as handle:
                self._private: Any = serialization.load_pem_private_key(
                    handle.read(), password.encode() if password else None
                )
            with open(certificate, "rb") as handle:
                own = x509.load_pem_x509_certificate(handle.read())
        except (OSError, ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"cannot load the signing key or certificate: {exc}") from None
        self.key_id = self._fingerprint(own)
        self._trusted: dict[bytes, Any] = {}
        for path in sorted(glob.glob(store)):
            try:
                with open(path, "rb") as handle:
                    trusted = x509.load_pem_x509_certificate(handle.read())
            except (OSError, ValueError) as exc:
                raise ImproperlyConfigured(f"security_cert_store: cannot load {path}: {exc}") from None
            self._trusted[self._fingerprint(trusted)] = trusted.public_key()
        if not self._trusted:
            raise ImproperlyConfigured(f"security_cert_store {store!r} holds no certificate")

    def _fingerprint(self, certificate: Any) -> bytes:
        return bytes(certificate.fingerprint(self._hashes.SHA256()))[:16]

    def _scheme(self, key: Any) -> tuple[Any, ...]:
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

        if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
            return (padding.PKCS1v15(), self._digest)
        if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
            return (ec.ECDSA(self._digest),)
        return ()  # Ed25519 and Ed448 take no parameters

    def sign(self, payload: bytes) -> bytes:
        return bytes(self._private.sign(payload, *self._scheme(self._private)))

    def verify(self, key_id: bytes, signature: bytes, payload: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        public = self._trusted.get(key_id)
        if public is None:
            return False
        try:
            public.verify(signature, payload, *self._scheme(public))
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True


class Signing:
    """Seals with the configured keys; opens and verifies what others sealed."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    def seal(self, payload: bytes) -> bytes:
        keys = self.keys
        signature = keys.sign(payload)
        return b"".join((MAGIC, _HEADER.pack(keys.kind, len(keys.key_id), len(signature)), keys.key_id,
                         signature, payload))  # fmt: skip

    def open(self, sealed: bytes) -> bytes:
        """The payload, if a key this side trusts signed it; else BadSignature saying why."""
        kind, key_id, signature, payload = _parts(sealed)
        if kind != self.keys.kind:
            raise BadSignature("signed with another kind of key")
        if not self.keys.verify(key_id, signature, payload):
            raise BadSignature("signed with an unknown key, or altered")
        return payload


def _parts(sealed: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    if not sealed.startswith(MAGIC):
        raise BadSignature("unsigned")
    start = len(MAGIC)
    try:
        kind, id_length, signature_length = _HEADER.unpack_from(sealed, start)
    except struct.error:
        raise BadSignature("truncated seal") from None
    start += _HEADER.size
    end = start + id_length + signature_length
    key_id, signature = sealed[start : start + id_length], sealed[start + id_length : end]
    if len(key_id) != id_length or len(signature) != signature_length:
        raise BadSignature("truncated seal")
    return kind, key_id, signature, sealed[end:]


def unsealed(data: bytes) -> bytes:
    """What a seal holds, unverified (for showing a dead letter; a side without keys reading)."""
    return _parts(data)[3] if data.startswith(MAGIC) else data


def from_settings(conf: Settings) -> Signing | None:
    """The signing the settings configure (None: off)."""
    if conf.task_signing_key:
        return Signing(SharedSecret([conf.task_signing_key, *conf.task_signing_old_keys]))
    if conf.security_key or conf.security_certificate or conf.security_cert_store:
        if not (conf.security_key and conf.security_certificate and conf.security_cert_store):
            raise ImproperlyConfigured(
                "signing with certificates needs security_key, security_certificate and security_cert_store"
            )
        return Signing(
            Certificates(conf.security_key, conf.security_certificate, conf.security_cert_store,
                         conf.security_digest, conf.security_key_password)
        )  # fmt: skip
    return None
