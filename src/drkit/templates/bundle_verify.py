#!/usr/bin/env python3
"""Verify a drkit evidence bundle with the Python standard library alone.

    python3 -I verify.py --key-id KEY_ID [BUNDLE_DIR]   (default: this file's directory)

KEY_ID is the id of the deployment's evidence key, which you take from outside the bundle
(`drkit audit verify` and every drkit report print it): anyone can write a bundle that
verifies with its own key, so the key is what you trust.

Checks, and says which failed:

1. every file is listed in manifest.sha256 with its SHA-256, and nothing else is there;
2. public_key.pem is an Ed25519 public key (not a point of small order, with which anything
   verifies) whose id is KEY_ID;
3. every checkpoint (checkpoints/SEQ.json) verifies against its signature (SEQ.sig) with
   that key (Ed25519, RFC 8032, implemented below), and checkpoints follow each other
   (each names the SHA-256 of the previous one's payload);
4. every record (one line of records.jsonl, exactly the text its hash is the SHA-256 of)
   has consecutive sequence numbers, links to the record before it (prev_hash), and its hash
   is the one a signed checkpoint lists at its sequence; every record a checkpoint signed
   within the bundle's range is there; only records newer than the newest checkpoint may be
   unsigned (reported as not yet signed).

Exit 0 when everything holds, 1 otherwise (2: no KEY_ID given). This file does not import
drkit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys

# --- Ed25519 verification (RFC 8032, section 6: the reference algorithm) ---------------------

_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _add(a: tuple[int, int, int, int], b: tuple[int, int, int, int]
         ) -> tuple[int, int, int, int]:
    big_a = (a[1] - a[0]) * (b[1] - b[0]) % _P
    big_b = (a[1] + a[0]) * (b[1] + b[0]) % _P
    c = 2 * a[3] * b[3] * _D % _P
    d = 2 * a[2] * b[2] % _P
    e, f, g, h = big_b - big_a, d - c, d + c, big_b + big_a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, point: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    result = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            result = _add(result, point)
        point = _add(point, point)
        s >>= 1
    return result


def _equal(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % _P == 0 and (a[1] * b[2] - b[1] * a[2]) % _P == 0


def _decompress(data: bytes) -> tuple[int, int, int, int] | None:
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0)
assert _GX is not None
_G = (_GX, _GY, 1, _GX * _GY % _P)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` by ``public``."""
    if len(public) != 32 or len(signature) != 64:
        return False
    a = _decompress(public)
    r = _decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(),
                       "little") % _L
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))


# --- the bundle -----------------------------------------------------------------------------

SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def main(directory: str, expected_key: str) -> int:
    problems: list[str] = []
    notes: list[str] = []

    def path(*parts: str) -> str:
        return os.path.join(directory, *parts)

    # 1. The manifest.
    listed: dict[str, str] = {}
    with open(path("manifest.sha256"), encoding="utf-8") as manifest:
        for line in manifest:
            digest, _, name = line.rstrip("\n").partition("  ")
            listed[name] = digest
    present = {os.path.relpath(os.path.join(root, name), directory)
               for root, _dirs, files in os.walk(directory) for name in files}
    for name in sorted(present - set(listed) - {"manifest.sha256"}):
        problems.append(f"{name}: not in manifest.sha256")
    for name, digest in sorted(listed.items()):
        try:
            with open(path(name), "rb") as item:
                actual = hashlib.sha256(item.read()).hexdigest()
        except OSError:
            problems.append(f"{name}: listed in manifest.sha256 but missing")
            continue
        if actual != digest:
            problems.append(f"{name}: its SHA-256 is not the manifest's (changed)")

    # 2. The key.
    with open(path("bundle.json"), encoding="utf-8") as text:
        bundle = json.load(text)
    with open(path("public_key.pem"), encoding="utf-8") as text:
        body = "".join(line.strip() for line in text if not line.startswith("-----"))
    der = base64.b64decode(body)
    if len(der) != 44 or not der.startswith(SPKI_PREFIX):
        print("BROKEN: public_key.pem is not an Ed25519 public key")
        return 1
    public = der[len(SPKI_PREFIX):]
    key_id = hashlib.sha256(public).hexdigest()[:16]
    point = _decompress(public)
    if point is None or _equal(_mul(8, point), (0, 1, 1, 0)):
        print("BROKEN: public_key.pem is not a key that can sign (a point of small order)")
        return 1
    if key_id != expected_key:
        print(f"BROKEN: the bundle's key is {key_id}, not the key {expected_key} you trust")
        return 1
    if key_id != bundle.get("key_id"):
        problems.append(f"public_key.pem has id {key_id}, the bundle says {bundle.get('key_id')}")

    # 3. Checkpoints.
    signed: dict[int, str] = {}
    names = sorted(n for n in os.listdir(path("checkpoints")) if n.endswith(".json"))
    previous_digest: str | None = None
    for name in names:
        with open(path("checkpoints", name), "rb") as item:
            payload = item.read()
        try:
            with open(path("checkpoints", name[:-5] + ".sig"), "rb") as item:
                signature = item.read()
        except OSError:
            problems.append(f"checkpoints/{name}: no signature")
            continue
        if not ed25519_verify(public, payload, signature):
            problems.append(f"checkpoints/{name}: the signature does not verify (changed "
                            "or forged)")
            continue
        data = json.loads(payload)
        if data.get("key_id") != key_id:
            problems.append(f"checkpoints/{name}: signed by key {data.get('key_id')}")
        if previous_digest is not None and data.get("previous") != previous_digest:
            problems.append(f"checkpoints/{name}: the checkpoint before it is not in the "
                            "bundle (removed)")
        previous_digest = hashlib.sha256(payload).hexdigest()
        for offset, value in enumerate(data.get("hashes", [])):
            signed[int(data["first_seq"]) + offset] = value

    # 4. Records.
    newest_signed = max(signed) if signed else 0
    seqs: set[int] = set()
    previous_hash: str | None = None
    expected: int | None = None
    unsigned = 0
    count = 0
    with open(path("records.jsonl"), "rb") as lines:
        for raw in lines:
            entry = raw.rstrip(b"\n")
            record = json.loads(entry)
            digest = hashlib.sha256(entry).hexdigest()
            seq = int(record["seq"])
            count += 1
            if record.get("format", 1) not in (1, 2):
                problems.append(f"record seq {seq}: unknown format {record.get('format')}")
            if expected is not None and seq != expected:
                problems.append(f"record seq {seq}: expected seq {expected} (records missing)")
            if previous_hash is not None and record.get("prev_hash") != previous_hash:
                problems.append(f"record seq {seq}: does not link to the record before it")
            seqs.add(seq)
            if seq in signed:
                if signed[seq] != digest:
                    problems.append(f"record seq {seq} ({record.get('kind')} "
                                    f"{record.get('target') or record.get('plan') or ''}): "
                                    "not the record the checkpoint signed (changed)")
            elif seq <= newest_signed:
                problems.append(f"record seq {seq}: no checkpoint signed it, though newer "
                                "records are signed (inserted)")
            else:
                unsigned += 1
            previous_hash, expected = digest, seq + 1
    if seqs:
        missing = sorted(s for s in signed if min(seqs) <= s <= max(seqs) and s not in seqs)
        if missing:
            problems.append(f"signed records missing from records.jsonl: seq "
                            f"{', '.join(str(s) for s in missing[:10])}"
                            f"{' and more' if len(missing) > 10 else ''} (removed)")
    if count and unsigned == count:
        problems.append("no record of the bundle is covered by a signed checkpoint")
    elif unsigned:
        notes.append(f"{unsigned} record(s) are newer than the newest checkpoint in the "
                     "bundle: not yet signed")

    for note in notes:
        print(f"note: {note}")
    if problems:
        for problem in problems:
            print(f"BROKEN: {problem}")
        return 1
    print(f"OK: {count} records, {len(names)} signed checkpoints, key {key_id}")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--key-id" not in args or args.index("--key-id") + 1 >= len(args):
        print("usage: python3 -I verify.py --key-id KEY_ID [BUNDLE_DIR]  (KEY_ID: the id of "
              "the evidence key you trust, from `drkit audit verify` or a drkit report)")
        sys.exit(2)
    at = args.index("--key-id")
    key = args[at + 1]
    rest = args[:at] + args[at + 2:]
    sys.exit(main(rest[0] if rest else os.path.dirname(os.path.abspath(__file__)), key))
