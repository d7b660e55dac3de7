"""The deployment's Ed25519 signing key, which signs every evidence manifest.

The private key is a secret like any other: ``evidence.signing_key`` in robot.toml is a
reference (``file:var/vault.enc#signing_key``, ``env:STAMPLESS_SIGNING_KEY`` or
``keyring:stampless/signing_key``) to the base64 of the 32 raw private-key bytes.
``stampless keys init`` creates one. The public key is not secret: it is written to
``<var>/keys/signing.pub`` (and ``<var>/keys/<key_id>.pub``, so bundles signed by an
earlier key still verify after a rotation), where verifiers read it without any secret.

For demos and tests only, :func:`ensure_dev_key` creates a key in a file vault under
``<var>/keys/`` whose vault key is stored beside it (mode 0600). Anyone who can read
that folder can sign bundles; never use it for a real deployment.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stampless._files import write_atomic
from stampless.errors import ConfigError
from stampless.vault import Secret, Vault, register_secret, resolve_secret

if TYPE_CHECKING:
    from stampless.config import Config

ALG = "Ed25519"
PUBLIC_KEY_FILE = "signing.pub"
DEV_VAULT_FILE = "dev-vault.enc"
DEV_VAULT_KEY_FILE = "dev-vault.key"
DEV_ENTRY = "signing_key"


def key_id_of(public_key_raw: bytes) -> str:
    """The key id: the first 16 hex digits of the SHA-256 of the raw public key."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, repr=False)
class Signer:
    """Signs bytes with the deployment's private key (which it never prints)."""

    _private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Signer:
        """A signer with a new random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_secret(cls, secret: Secret | str, *, ref: str = "the signing key") -> Signer:
        """Load a key from the base64 of its 32 raw bytes (or a PEM private key)."""
        text = (secret.reveal() if isinstance(secret, Secret) else secret).strip()
        try:
            if text.startswith("-----BEGIN"):
                key = serialization.load_pem_private_key(text.encode(), password=None)
                if not isinstance(key, Ed25519PrivateKey):
                    raise ValueError("not Ed25519")
                return cls(key)
            raw = base64.b64decode(text, validate=True)
            return cls(Ed25519PrivateKey.from_private_bytes(raw))
        except (ValueError, binascii.Error, TypeError):
            raise ConfigError(
                f"{ref} is not an Ed25519 private key; create one with 'stampless keys init'."
            ) from None

    def private_b64(self) -> Secret:
        """The private key as base64 of its raw bytes, wrapped so it does not print."""
        raw = self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return Secret(base64.b64encode(raw).decode())

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._private.sign(data)

    @property
    def public_key_raw(self) -> bytes:
        return _raw_public(self._private.public_key())

    @property
    def public_key_b64(self) -> str:
        """The public key as base64 of its 32 raw bytes (what manifests and verifiers use)."""
        return base64.b64encode(self.public_key_raw).decode()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key_raw)

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"


def load_public_key(public_key_b64: str) -> Ed25519PublicKey:
    """Parse a base64 raw Ed25519 public key; ValueError if it is not one."""
    try:
        raw = base64.b64decode(public_key_b64.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("not a base64 Ed25519 public key") from exc


def verify_signature(public_key_b64: str, data: bytes, signature_b64: str) -> bool:
    """True when ``signature_b64`` is a valid signature of ``data`` by that public key."""
    try:
        key = load_public_key(public_key_b64)
        key.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError, binascii.Error, TypeError):
        return False
    return True


def keys_dir(config: Config) -> Path:
    """``<var>/keys``: public keys for verifiers, and the dev key (demos and tests only)."""
    return config.var_dir / "keys"


def write_public_key(config: Config, signer: Signer) -> Path:
    """Write ``signing.pub`` (the current key) and ``<key_id>.pub`` (kept after rotation)."""
    folder = keys_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    line = signer.public_key_b64 + "\n"
    (folder / f"{signer.key_id}.pub").write_text(line, encoding="ascii")
    current = folder / PUBLIC_KEY_FILE
    write_atomic(current, line)
    return current


def trusted_public_keys(config: Config) -> list[str]:
    """Every public key in ``<var>/keys/*.pub`` (the current one and earlier ones)."""
    folder = keys_dir(config)
    keys: list[str] = []
    if folder.is_dir():
        for file in sorted(folder.glob("*.pub")):
            text = file.read_text(encoding="ascii", errors="replace").strip()
            try:
                load_public_key(text)
            except ValueError:
                continue
            if text not in keys:
                keys.append(text)
    return keys


def load_signer(config: Config) -> Signer:
    """The deployment's signer, from the secret ``evidence.signing_key`` refers to.

    Raises ConfigError when no key is configured (run ``stampless keys init``) or the
    secret cannot be resolved.
    """
    ref = config.evidence.signing_key
    if not ref:
        raise ConfigError(
            "No signing key is configured; set evidence.signing_key in robot.toml "
            "(e.g. \"file:var/vault.enc#signing_key\") and run 'stampless keys init'."
        )
    return Signer.from_secret(resolve_secret(ref, config=config), ref=f"Secret {ref}")


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` (0600) holding ``text``, atomically; FileExistsError if it exists.

    Written whole and linked into place, so a concurrent reader never sees an empty key.
    """
    if not write_atomic(path, text, once=True, mode=0o600):
        raise FileExistsError(path)


def ensure_dev_key(config: Config) -> Signer:
    """A signer for demos and tests, created on first use under ``<var>/keys/``.

    Uses ``evidence.signing_key`` when it is configured and resolves. Otherwise it keeps
    a key in the file vault ``<var>/keys/dev-vault.enc`` whose vault key sits beside it
    in ``dev-vault.key`` (mode 0600). That is NOT protection: for demos and tests only.
    """
    if config.evidence.signing_key:
        with_config = load_signer(config)
        write_public_key(config, with_config)
        return with_config
    folder = keys_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / DEV_VAULT_KEY_FILE
    vault_file = folder / DEV_VAULT_FILE
    if not key_file.exists():
        # If another process created it first, use theirs.
        with contextlib.suppress(FileExistsError):
            _write_private(key_file, Vault.generate_key())
    vault_key = key_file.read_text(encoding="ascii").strip()
    register_secret(vault_key)
    vault = Vault(vault_file, vault_key)
    with vault._locked():
        # Under the vault's lock, so two workers starting at once end with one key.
        if DEV_ENTRY in vault.names():
            signer = Signer.from_secret(vault.get(DEV_ENTRY), ref=f"{vault_file}#{DEV_ENTRY}")
        else:
            signer = Signer.generate()
            data = vault._read()
            data[DEV_ENTRY] = signer.private_b64().reveal()
            vault._write(data)
    write_public_key(config, signer)
    return signer
