"""Cheap restic keys for the test suite: rewrite a new repository's key file with small scrypt
parameters, as restic's own Go tests do (``repository.TestUseLowSecurityKDFParameters``).

restic derives the key from the password with scrypt at every start; the parameters are
calibrated at ``restic init`` to take about half a second of CPU on the machine, and the test
suite starts restic well over a thousand times. The key file keeps the same master key, the
same format and the same password; only the work factor changes (N=1024, r=8, p=1). Every
restic command still runs for real against the real repository.

Used by the ``restic`` wrapper the ``restic_binary`` fixture hands out (see conftest.py):
``python fastkey.py REAL_RESTIC ARGS...`` runs ``REAL_RESTIC ARGS...`` (an ``init``) and, when it
succeeded, rewrites the key files of the repository it created (a local path or an ``s3:``
URL; the location and the password come from restic's own environment variables or ``-r``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.poly1305 import Poly1305

CHEAP = {"N": 1024, "r": 8, "p": 1}


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> tuple[bytes, bytes, bytes]:
    """restic's KDF: 64 bytes of scrypt; the AES-256 key, then the MAC key as k || r."""
    raw = Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(password.encode())
    return raw[:32], raw[32:48], raw[48:64]


def _mac(message: bytes, nonce: bytes, k: bytes, r: bytes) -> bytes:
    """restic's Poly1305-AES: the one-time key is r || AES_k(nonce)."""
    encryptor = Cipher(algorithms.AES(k), modes.ECB()).encryptor()
    one_time = r + encryptor.update(nonce) + encryptor.finalize()
    return Poly1305.generate_tag(one_time, message)


def _open(data: bytes, password: str, key: dict[str, Any]) -> bytes:
    enc, k, r = _derive(password, base64.b64decode(key["salt"]), key["N"], key["r"], key["p"])
    nonce, body, tag = data[:16], data[16:-16], data[-16:]
    if _mac(body, nonce, k, r) != tag:
        raise SystemExit("fastkey: the key file does not open with this password")
    decryptor = Cipher(algorithms.AES(enc), modes.CTR(nonce)).decryptor()
    return decryptor.update(body) + decryptor.finalize()


def _seal(plain: bytes, password: str, salt: bytes) -> bytes:
    enc, k, r = _derive(password, salt, CHEAP["N"], CHEAP["r"], CHEAP["p"])
    nonce = os.urandom(16)
    encryptor = Cipher(algorithms.AES(enc), modes.CTR(nonce)).encryptor()
    body = encryptor.update(plain) + encryptor.finalize()
    return nonce + body + _mac(body, nonce, k, r)


def cheapen(text: bytes, password: str) -> bytes:
    """The key file ``text`` re-encrypted under cheap scrypt parameters."""
    key = json.loads(text)
    if key.get("kdf") != "scrypt" or key.get("N") == CHEAP["N"]:
        return text
    plain = _open(base64.b64decode(key["data"]), password, key)
    salt = os.urandom(64)
    key.update(CHEAP, salt=base64.b64encode(salt).decode(),
               data=base64.b64encode(_seal(plain, password, salt)).decode())
    return json.dumps(key).encode()


def _password() -> str | None:
    if "RESTIC_PASSWORD" in os.environ:
        return os.environ["RESTIC_PASSWORD"]
    if "RESTIC_PASSWORD_FILE" in os.environ:
        with open(os.environ["RESTIC_PASSWORD_FILE"]) as handle:
            return handle.read().rstrip("\r\n")
    return None


def _repository(args: list[str]) -> str | None:
    for index, arg in enumerate(args):
        if arg in ("-r", "--repo") and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--repo="):
            return arg.split("=", 1)[1]
    return os.environ.get("RESTIC_REPOSITORY")


def _name(text: bytes) -> str:
    """A key file is stored under the SHA-256 of its content (restic >= 0.17 checks)."""
    return hashlib.sha256(text).hexdigest()


def _rekey_local(path: str, password: str) -> None:
    keys = os.path.join(path, "keys")
    for name in os.listdir(keys):
        file = os.path.join(keys, name)
        with open(file, "rb") as handle:
            text = cheapen(handle.read(), password)
        mode = os.stat(file).st_mode & 0o777
        fresh = os.path.join(keys, _name(text))
        with open(fresh, "wb") as handle:
            handle.write(text)
        os.chmod(fresh, mode)
        if fresh != file:
            os.unlink(file)


def _rekey_s3(url: str, password: str) -> None:
    import boto3
    from botocore.config import Config

    rest = url.removeprefix("s3:")
    scheme, _, rest = rest.partition("://")
    host, _, path = rest.partition("/")
    bucket, _, prefix = path.partition("/")
    client = boto3.client("s3", endpoint_url=f"{scheme}://{host}",
                          region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                          config=Config(s3={"addressing_style": "path"}))
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/keys/".lstrip("/"))
    for item in listing.get("Contents", []):
        text = cheapen(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read(),
                       password)
        fresh = item["Key"].rsplit("/", 1)[0] + "/" + _name(text)
        client.put_object(Bucket=bucket, Key=fresh, Body=text)
        if fresh != item["Key"]:
            client.delete_object(Bucket=bucket, Key=item["Key"])


def main(argv: list[str]) -> int:
    real, args = argv[0], argv[1:]
    code = subprocess.run([real, *args]).returncode
    url, password = _repository(args), _password()
    if code != 0 or url is None or password is None:
        return code
    if url.startswith("s3:http"):
        _rekey_s3(url, password)
    elif ":" not in url.split("/")[0] or url.startswith("local:"):
        _rekey_local(url.removeprefix("local:"), password)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
