"""Encryption at rest of users' provider keys, and their masked form.

AES-256-GCM (authenticated) with a key derived from `SECRET_KEY` by HKDF-SHA256.
A stored value is `v1.<key id>.<base64url(nonce | ciphertext+tag)>`; the key id
(8 hex digits of a hash of the derived key, not the key) says which
`SECRET_KEY` wrote it. The associated data binds a ciphertext to its owner
(tenant, user, provider): a value copied onto another row does not decrypt.

Rotation: set the new `SECRET_KEY` and the old one as `SECRET_KEY_PREVIOUS`;
reads fall back to the previous key, and `blogqueue keys rotate` re-encrypts
every stored key with the current one, after which `SECRET_KEY_PREVIOUS` can go.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .settings import Settings

VERSION = "v1"
_INFO = b"blogqueue provider keys v1"


class SecretKeyMissing(Exception):
    """No SECRET_KEY is configured, so keys cannot be stored or read."""


class DecryptError(Exception):
    """The value was not written with the current or previous SECRET_KEY (or was tampered with)."""


def _derive(secret: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"blogqueue", info=_INFO).derive(secret.encode())


def key_id(secret: str) -> str:
    return hashlib.sha256(b"kid:" + _derive(secret)).hexdigest()[:8]


def _keys(settings: Settings) -> list[str]:
    return [k for k in (settings.secret_key, settings.secret_key_previous) if k]


def encrypt(settings: Settings, plaintext: str, owner: str) -> str:
    if not settings.secret_key:
        raise SecretKeyMissing("BLOGQUEUE_SECRET_KEY is not set")
    nonce = os.urandom(12)
    sealed = AESGCM(_derive(settings.secret_key)).encrypt(nonce, plaintext.encode(), owner.encode())
    return f"{VERSION}.{key_id(settings.secret_key)}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def decrypt(settings: Settings, stored: str, owner: str) -> str:
    keys = _keys(settings)
    if not keys:
        raise SecretKeyMissing("BLOGQUEUE_SECRET_KEY is not set")
    try:
        version, kid, blob = stored.split(".", 2)
        raw = base64.urlsafe_b64decode(blob)
    except ValueError:
        raise DecryptError("not a stored secret") from None
    if version != VERSION:
        raise DecryptError(f"unknown secret format {version!r}")
    for secret in sorted(keys, key=lambda k: key_id(k) != kid):  # the matching key first
        try:
            return AESGCM(_derive(secret)).decrypt(raw[:12], raw[12:], owner.encode()).decode()
        except InvalidTag:
            continue
    raise DecryptError("written with another SECRET_KEY")


def needs_rotation(settings: Settings, stored: str) -> bool:
    return bool(settings.secret_key) and stored.split(".", 2)[1:2] != [key_id(settings.secret_key or "")]


def mask(key: str) -> str:
    """`sk-proj-…` → `sk-…abcd`: the key's kind and its last four characters, nothing else."""
    head = ""
    for sep in ("-", "_"):
        i = key.find(sep)
        if 0 < i <= 4:
            head = key[: i + 1]
            break
    if not head:
        head = key[:2] if len(key) >= 12 else ""
    tail = key[-4:] if len(key) >= 12 else ""
    return f"{head}…{tail}"
