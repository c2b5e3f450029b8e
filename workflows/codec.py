"""Customer data encrypted in workflow histories: a payload codec, AES-256-GCM.

Every payload a client or worker writes (workflow inputs, update arguments and results,
activity inputs and results, memos, summaries, failure messages) passes `encode` before
it reaches the Temporal server, so a history holds names, phone numbers and e-mail
addresses only as ciphertext. `workflows/client.py` puts the one `EncryptionCodec` into
the one data converter.

An encrypted payload is the whole original payload (metadata and data, serialized)
sealed with AES-256-GCM under a fresh 96-bit nonce: `data` = nonce ‖ ciphertext ‖ tag,
with the metadata `encoding: binary/encrypted` and `encryption-key-id: <id>`, the
layout of Temporal's encryption sample, so its codec servers and tools recognise it.

Keys, `KeyRing`: `KEY_ID:BASE64_KEY,KEY_ID:BASE64_KEY,…` (NEEDFLOW_CODEC_KEYS), each key
32 random bytes. The first one encrypts; every one decrypts the payloads carrying its id.
To rotate, put a new key first and keep the old ones after it for as long as any history
(retention) or running workflow may hold payloads they encrypted. A payload without
`binary/encrypted` (written before encryption, such as tests/histories/) passes `decode`
unchanged. A payload whose key id is not configured fails with `UnknownKeyId` naming it:
a worker's workflow task then retries until the key is configured again, it is never
read as something else.

`python -m workflows.codec KEY_ID` prints a new `KEY_ID:BASE64_KEY` entry.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's 96-bit nonce, random per payload
VARIABLE = "NEEDFLOW_CODEC_KEYS"

_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CodecError(ValueError):
    """A payload that cannot be encrypted or decrypted, or keys that are not usable."""


class UnknownKeyId(CodecError):
    """A payload encrypted with a key that is not configured (any more)."""


class NoEncryptionKey(CodecError):
    """Encrypting before any key was given to the codec."""


@dataclass(frozen=True)
class KeyRing:
    """The configured keys by id; `current` encrypts. Never shows the key material."""

    current: str
    keys: Mapping[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise CodecError(f"the current key {self.current!r} is not among the keys")
        for key_id, key in self.keys.items():
            if not _KEY_ID.match(key_id):
                raise CodecError(f"key id {key_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
            if len(key) != KEY_BYTES:
                raise CodecError(f"key {key_id!r} must be {KEY_BYTES} bytes (AES-256), got {len(key)}")

    @property
    def ids(self) -> list[str]:
        """The key ids, the current one first."""
        return [self.current, *(k for k in self.keys if k != self.current)]

    @classmethod
    def parse(cls, text: str, variable: str = VARIABLE) -> KeyRing:
        """`KEY_ID:BASE64_KEY,…`, the first one current. Errors name the variable and the
        entry, never the key material."""
        entries = [e.strip() for e in text.replace("\n", ",").split(",") if e.strip()]
        if not entries:
            raise CodecError(f"{variable} holds no key: set it to KEY_ID:BASE64_KEY[,KEY_ID:BASE64_KEY…]")
        keys: dict[str, bytes] = {}
        for n, entry in enumerate(entries, start=1):
            key_id, sep, encoded = entry.partition(":")
            key_id = key_id.strip()
            if not sep or not key_id or not encoded.strip():
                raise CodecError(f"{variable} entry {n} must be KEY_ID:BASE64_KEY")
            if not _KEY_ID.match(key_id):
                raise CodecError(
                    f"{variable} entry {n}: key id {key_id!r} must be 1-64 letters, digits, '.', '_' or '-'"
                )
            if key_id in keys:
                raise CodecError(f"{variable} names key id {key_id!r} twice")
            key = _b64decode(encoded.strip())
            if key is None:
                raise CodecError(f"{variable} entry {n} ({key_id}): the key is not base64")
            if len(key) != KEY_BYTES:
                raise CodecError(
                    f"{variable} entry {n} ({key_id}): the key must be {KEY_BYTES} random bytes (AES-256), "
                    f"got {len(key)}"
                )
            keys[key_id] = key
        return cls(current=next(iter(keys)), keys=keys)

    @staticmethod
    def new_entry(key_id: str) -> str:
        """A new random key as a `KEY_ID:BASE64_KEY` entry."""
        if not _KEY_ID.match(key_id):
            raise CodecError(f"key id {key_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
        return f"{key_id}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


def _b64decode(text: str) -> bytes | None:
    """Standard or URL-safe base64, padded or not."""
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole payloads, with the key ring it was given (`use`).

    Without keys it decrypts nothing and refuses to encrypt: no payload is ever written
    in the clear because a process forgot its configuration.
    """

    def __init__(self, keys: KeyRing | None = None) -> None:
        super().__init__()
        self._keys: KeyRing | None = None
        self._ciphers: dict[str, AESGCM] = {}
        if keys is not None:
            self.use(keys)

    @property
    def keys(self) -> KeyRing | None:
        return self._keys

    def use(self, keys: KeyRing) -> None:
        """Encrypt with `keys.current` from now on; decrypt with any of `keys`."""
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.keys.items()}
        self._keys = keys

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self._keys is None:
            raise NoEncryptionKey(
                f"no encryption key: workflow payloads are never written in the clear. Configure {VARIABLE} "
                "(workflows.client.connect gives the settings' keys to the data converter)"
            )
        key_id = self._keys.current
        cipher = self._ciphers[key_id]
        encrypted = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            encrypted.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()},
                    data=nonce + cipher.encrypt(nonce, payload.SerializeToString(), None),
                )
            )
        return encrypted

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                decoded.append(payload)  # never encrypted: a history from before encryption
                continue
            key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
            cipher = self._ciphers.get(key_id)
            if cipher is None:
                configured = ", ".join(self._keys.ids) if self._keys else "none"
                raise UnknownKeyId(
                    f"a payload is encrypted with key id {key_id!r}, which is not configured "
                    f"(configured: {configured}); add that key back to {VARIABLE} to read it"
                )
            data = payload.data
            try:
                plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
            except InvalidTag:
                raise CodecError(
                    f"a payload encrypted with key id {key_id!r} does not decrypt: the key configured under "
                    "that id is not the one it was encrypted with, or the payload was altered"
                ) from None
            decoded.append(Payload.FromString(plain))
        return decoded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workflows.codec",
        description=f"Print a new payload encryption key as a {VARIABLE} entry (KEY_ID:BASE64_KEY).",
    )
    default_id = "k" + datetime.now(UTC).strftime("%Y%m%d")
    parser.add_argument("key_id", nargs="?", default=default_id, help=f"the key's id (default {default_id})")
    args = parser.parse_args(argv)
    try:
        print(KeyRing.new_entry(args.key_id))
    except CodecError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
