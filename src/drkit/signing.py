"""Ed25519 keys for signing the chain's checkpoints: the formats ``openssl`` reads, parsed
without loading a whole crypto stack on drkit's start-up path.

A private key is a PEM ``PRIVATE KEY`` (PKCS #8, as ``openssl genpkey -algorithm ed25519``
writes it); a public key is a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo), or just its base64
body, which is what the config's ``evidence.public_key`` holds. Both have a fixed DER prefix
for Ed25519, so they are checked and cut here; ``cryptography`` (imported only to sign or
verify) does the arithmetic. A key's id is the first 16 hex digits of the SHA-256 of its 32
raw public bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from drkit.errors import DrkitError

SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")        # + 32 bytes of public key
PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")  # + 32 bytes of seed


class PublicKeyError(DrkitError):
    """Not an Ed25519 public key."""


class PrivateKeyError(DrkitError):
    """Not an Ed25519 private key (its text is never shown)."""


def _der(text: str, label: str) -> bytes:
    body = "".join(line for line in text.strip().splitlines()
                   if not line.startswith("-----")) if "-----" in text else text
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"not base64 ({label})") from None


def public_bytes(text: str) -> bytes:
    """The 32 raw bytes of the Ed25519 public key in ``text`` (PEM or base64 DER)."""
    try:
        der = _der(text, "PEM or base64 of an Ed25519 public key")
    except ValueError as exc:
        raise PublicKeyError(f"public_key: {exc}") from None
    if len(der) != len(SPKI_PREFIX) + 32 or not der.startswith(SPKI_PREFIX):
        raise PublicKeyError("public_key is not an Ed25519 public key (drkit keygen writes "
                             "one; openssl pkey -pubout prints one)")
    return der[len(SPKI_PREFIX):]


def load_public_key(text: str) -> bytes:
    """Check ``text`` holds an Ed25519 public key that can sign (not a point of small order,
    with which any message "verifies"); return its raw bytes."""
    raw = public_bytes(text)
    if small_order(raw):
        raise PublicKeyError("public_key is a point of small order: every signature would "
                             "verify with it (not a key drkit keygen writes)")
    return raw


_P = 2 ** 255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P


def small_order(raw: bytes) -> bool:
    """Whether the Ed25519 point ``raw`` is not a point at all, or of order dividing 8."""
    y = int.from_bytes(raw, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= _P:
        return True
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if (x * x - x2) % _P:
        return True
    if x & 1 != sign:
        x = _P - x
    point = (x, y, 1, x * y % _P)
    for _ in range(3):  # [8]P
        point = _double(point)
    return point[0] % _P == 0 and (point[1] - point[2]) % _P == 0


def _double(a: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    big_a = (a[1] - a[0]) * (a[1] - a[0]) % _P
    big_b = (a[1] + a[0]) * (a[1] + a[0]) % _P
    c = 2 * a[3] * a[3] * _D % _P
    d = 2 * a[2] * a[2] % _P
    e, f, g, h = big_b - big_a, d - c, d + c, big_b + big_a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def key_id(raw_public: bytes) -> str:
    """The short id a checkpoint names its signer by."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def private_seed(text: str) -> bytes:
    """The 32-byte seed of the Ed25519 private key in PEM ``text``."""
    try:
        der = _der(text, "PEM private key")
    except ValueError:
        raise PrivateKeyError("the signing key is not a PEM private key") from None
    if len(der) != len(PKCS8_PREFIX) + 32 or not der.startswith(PKCS8_PREFIX):
        raise PrivateKeyError("the signing key is not an Ed25519 private key (drkit keygen "
                              "writes one)")
    return der[len(PKCS8_PREFIX):]


class Signer:
    """Signs with one private key; knows its public key and id."""

    def __init__(self, private_pem: str) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._key = Ed25519PrivateKey.from_private_bytes(private_seed(private_pem))
        self.public = self._key.public_key().public_bytes_raw()
        self.key_id = key_id(self.public)

    def sign(self, message: bytes) -> str:
        """The base64 signature of ``message``."""
        return base64.b64encode(self._key.sign(message)).decode()


class Verifier:
    """Checks signatures with one public key."""

    def __init__(self, public_text: str) -> None:
        self._set(load_public_key(public_text))

    @classmethod
    def from_raw(cls, raw: bytes) -> Verifier:
        verifier = cls.__new__(cls)
        verifier._set(raw)
        return verifier

    def _set(self, raw: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self.public = raw
        self.key_id = key_id(raw)
        self._key: Any = Ed25519PublicKey.from_public_bytes(raw)

    def verify(self, message: bytes, signature: str) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self._key.verify(base64.b64decode(signature, validate=True), message)
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


def generate() -> tuple[str, str]:
    """A new key pair: (private key PEM, public key PEM), both as openssl writes them."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.PEM,
                                           PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def public_pem(raw_public: bytes) -> str:
    """The PEM ``PUBLIC KEY`` of raw Ed25519 public bytes (what ``openssl pkeyutl -pubin``
    reads)."""
    body = base64.b64encode(SPKI_PREFIX + raw_public).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


def public_base64(raw_public: bytes) -> str:
    """The one-line form the config's ``evidence.public_key`` takes."""
    return base64.b64encode(SPKI_PREFIX + raw_public).decode()
