"""Encryption at rest: named AES-256-GCM keys that seal recorded payloads.

A :class:`Keyring` holds one or more keys, each under an id. The first key
seals new payloads; every key opens what it sealed, so keys rotate by putting
the new key first and keeping the old ones while records sealed with them
remain. A sealed payload names its key id (never the key); the associated
data binds it to the record it belongs to (kind, state key, position), so a
sealed result cannot be moved to another record unnoticed.

Keys come from the environment, one of:

* ``ACTIONSTATE_KEYS``: ``id:base64key[,id:base64key...]``;
* ``ACTIONSTATE_KEY_FILE``: a file with one ``id:base64key`` per line (``#``
  comments); keep it 0600.

``actionstate keygen ID`` prints a new entry. The primitive is the
``cryptography`` package's AES-GCM (extra ``actionstate[crypto]``), with a
random 96-bit nonce per payload.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from actionstate.errors import ConfigError, EncryptionKeyError

__all__ = ["KEYS_ENV", "KEY_FILE_ENV", "Keyring", "Sealed", "is_sealed_text", "missing_key",
           "new_key_entry", "text_parts"]

KEYS_ENV = "ACTIONSTATE_KEYS"
KEY_FILE_ENV = "ACTIONSTATE_KEY_FILE"
log = logging.getLogger("actionstate")
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NONCE = 12
_TEXT_PREFIX = "sealed:"


class Sealed:
    """A payload whose key is not configured, as :mod:`actionstate.inspection` shows it."""

    __slots__ = ("key_id",)

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"<encrypted with key {self.key_id!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sealed) and other.key_id == self.key_id

    def __hash__(self) -> int:
        return hash(("Sealed", self.key_id))


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise ConfigError(
            f"encryption keys are configured ({KEYS_ENV} or {KEY_FILE_ENV}) but the "
            "cryptography package is not installed: pip install 'actionstate[crypto]'"
        ) from None
    return AESGCM


class Keyring:
    """Named 256-bit keys; the first seals, every one opens."""

    def __init__(self, keys: Sequence[tuple[str, bytes]], source: str = "the keyring") -> None:
        if not keys:
            raise ConfigError(f"{source} holds no key: give at least one id:base64key entry")
        aesgcm = _aesgcm()
        self._ciphers: dict[str, Any] = {}
        for key_id, key in keys:
            if not _ID.fullmatch(key_id):
                raise ConfigError(
                    f"{source}: key id {key_id[:70]!r} is not 1-64 letters, digits, '.', '_' "
                    "or '-'")
            if key_id in self._ciphers:
                raise ConfigError(f"{source}: key id {key_id!r} is given twice: give each "
                                  "key once, the one that seals first")
            if len(key) != 32:
                raise ConfigError(
                    f"{source}: key {key_id!r} is {len(key)} bytes, AES-256 needs 32: make "
                    f"one with `actionstate keygen {key_id}`")
            self._ciphers[key_id] = aesgcm(key)
        self.active = keys[0][0]
        self._cipher = self._ciphers[self.active]
        from cryptography.exceptions import InvalidTag

        self._invalid_tag = InvalidTag
        self.source = source

    def __repr__(self) -> str:  # never the keys
        return f"Keyring(ids={list(self._ciphers)}, active={self.active!r})"

    @property
    def ids(self) -> list[str]:
        return list(self._ciphers)

    # -- sealing -------------------------------------------------------------

    def seal(self, plain: bytes, aad: bytes) -> list[str]:
        """``[key id, base64(nonce + ciphertext + tag)]`` of ``plain`` under the active key."""
        nonce = os.urandom(_NONCE)
        sealed = self._cipher.encrypt(nonce, plain, aad)
        return [self.active, binascii.b2a_base64(nonce + sealed, newline=False).decode("ascii")]

    def seal_json(self, plain: bytes, aad: bytes) -> str:
        """:meth:`seal` as its JSON text (what a record holds; ids and base64 need no
        escaping): the hot path of a sealed call."""
        nonce = os.urandom(_NONCE)
        sealed = self._cipher.encrypt(nonce, plain, aad)
        return (f'["{self.active}","'
                f'{binascii.b2a_base64(nonce + sealed, newline=False).decode("ascii")}"]')

    def open(self, sealed: Any, aad: bytes, where: str) -> bytes:
        """The plaintext of a :meth:`seal` result; ``where`` names it in errors.

        Raises:
            EncryptionKeyError: its key is not configured, or does not open it.
        """
        try:
            key_id, encoded = sealed
            blob = binascii.a2b_base64(encoded, strict_mode=True)
        except (TypeError, ValueError):  # binascii.Error is a ValueError
            raise _malformed(where) from None
        cipher = self._ciphers.get(key_id) if type(key_id) is str else None
        if cipher is None:
            if type(key_id) is not str:
                raise _malformed(where)
            raise missing_key(key_id, where, self)
        try:
            return bytes(cipher.decrypt(blob[:_NONCE], blob[_NONCE:], aad))
        except self._invalid_tag:
            raise EncryptionKeyError(
                f"{where} does not decrypt with the configured key {key_id!r}: the key given "
                f"under that id is not the one that sealed it (or the record was changed): "
                f"configure the original key {key_id!r}") from None
        except ValueError:  # shorter than a nonce and a tag
            raise _malformed(where) from None

    def seal_text(self, plain: str, aad: bytes) -> str:
        """A :meth:`seal` as one string ``sealed:<key id>:<base64>``."""
        key_id, blob = self.seal(plain.encode("utf-8", "surrogatepass"), aad)
        return f"{_TEXT_PREFIX}{key_id}:{blob}"

    def open_text(self, text: str, aad: bytes, where: str) -> str:
        return self.open(text_parts(text, where), aad, where).decode("utf-8", "surrogatepass")

    # -- where keys come from ------------------------------------------------

    @classmethod
    def parse(cls, text: str, source: str) -> Keyring:
        """Entries ``id:base64key`` separated by commas or lines; ``#`` starts a comment.
        Messages name the entry by its number, never its key."""
        keys = []
        entries = [e.strip() for line in text.splitlines()
                   for e in line.split("#", 1)[0].split(",")]
        for number, entry in enumerate((e for e in entries if e), start=1):
            key_id, sep, encoded = entry.partition(":")
            if not sep:
                raise ConfigError(f"{source}: entry {number} is not id:base64key")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{source}: the key of entry {number} ({key_id.strip()!r}) "
                                  "is not base64") from None
            keys.append((key_id.strip(), key))
        return cls(keys, source)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring | None:
        """The keyring the environment configures, or None (no encryption)."""
        env = os.environ if environ is None else environ
        inline, path = env.get(KEYS_ENV), env.get(KEY_FILE_ENV)
        if inline and path:
            raise ConfigError(f"both {KEYS_ENV} and {KEY_FILE_ENV} are set: set one")
        if inline:
            return cls.parse(inline, KEYS_ENV)
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8")
                mode = stat.S_IMODE(os.stat(path).st_mode)
            except OSError as exc:
                raise ConfigError(f"{KEY_FILE_ENV}={path} cannot be read "
                                  f"({exc.strerror or exc}): give a readable key file") from None
            _warn_if_shared(path, mode)
            return cls.parse(text, f"key file {path}")
        return None


_WARNED: set[str] = set()


def _warn_if_shared(path: str, mode: int) -> None:
    """Warn (once per file and process) when others than its owner may read the key file."""
    if mode & 0o077 and path not in _WARNED:
        _WARNED.add(path)
        log.warning("key file %s (%s) is open to other users (mode %04o): anyone who can "
                    "read it can read the records it seals; run `chmod 600 %s`", path,
                    KEY_FILE_ENV, mode, path)


def missing_key(key_id: str, where: str, keyring: Keyring | None) -> EncryptionKeyError:
    have = (f"the configured keys ({keyring.source}) are {', '.join(keyring.ids)}"
            if keyring is not None else "no key is configured")
    return EncryptionKeyError(
        f"{where} is encrypted with key {key_id!r}, and {have}: add key {key_id!r} to "
        f"{KEYS_ENV} or {KEY_FILE_ENV} (keep old keys while records sealed with them remain)")


def _malformed(where: str) -> EncryptionKeyError:
    return EncryptionKeyError(f"{where} holds a malformed encrypted payload: the record is "
                              "damaged")


def is_sealed_text(text: str) -> bool:
    return text.startswith(_TEXT_PREFIX)


def text_parts(text: str, where: str) -> list[str]:
    """``[key id, base64]`` of a :meth:`Keyring.seal_text` string."""
    key_id, sep, blob = text[len(_TEXT_PREFIX):].partition(":")
    if not is_sealed_text(text) or not sep:
        raise EncryptionKeyError(f"{where} holds a malformed encrypted payload")
    return [key_id, blob]


def new_key_entry(key_id: str) -> str:
    """A new ``id:base64key`` entry of 32 random bytes."""
    if not _ID.fullmatch(key_id):
        raise ConfigError(f"key id {key_id[:70]!r} is not 1-64 letters, digits, '.', '_' or '-'")
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode('ascii')}"
