"""The deployment's Ed25519 signing key, and which public keys a verifier trusts.

The private key is a secret like any other: ``evidence.signing_key`` in robot.toml is a
reference (``file:/etc/stampless/vault.enc#signing_key``, ``env:STAMPLESS_SIGNING_KEY``
or ``keyring:stampless/signing_key``) to the base64 of the 32 raw private-key bytes.
``stampless keys init`` creates one. Production commands (``run``, ``schedule``,
``verify``, ``review serve``) get their signer from :func:`production_signer`, which
refuses to start without a configured key, and refuses a key kept in the same folder
as the key that unlocks it.

Trust does not come from var/ (:class:`TrustedKeys`): a verifier trusts the key
fingerprints pinned in robot.toml (``[evidence] trusted_keys``), the public keys in a
keyring file outside var/ (``[evidence] keyring``), and keys given on its command line
(``--pubkey``). ``<var>/keys/signing.pub`` is only the published copy of the current
public key, for people to pin; nothing trusts it for being there.

For demos and tests only, :func:`ensure_dev_key` creates a key in a file vault under
``<var>/keys/`` whose vault key is stored beside it (mode 0600). Anyone who can read
that folder can sign bundles; it is used only with ``--dev`` (and by ``stampless demo``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stampless._files import write_atomic
from stampless.errors import ConfigError, InputError
from stampless.vault import (
    VAULT_KEY_ENV,
    Secret,
    Vault,
    parse_file_ref,
    register_secret,
    resolve_secret,
)

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


FINGERPRINT_PREFIX = "sha256:"


def fingerprint(public_key_b64: str) -> str:
    """``sha256:<64 hex>`` of the raw public key: what robot.toml pins (``trusted_keys``).

    The whole SHA-256, not the 16-digit key id: a pin must not be matched by a key an
    attacker searched for.
    """
    raw = base64.b64decode(public_key_b64.strip(), validate=True)
    return FINGERPRINT_PREFIX + hashlib.sha256(raw).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


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
    """``<var>/keys``: the published public keys, and the dev key (demos and tests only)."""
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


def dev_public_key(config: Config) -> str | None:
    """The development key's public half, when this deployment has one (else None)."""
    folder = keys_dir(config)
    if not (folder / DEV_VAULT_KEY_FILE).is_file() or not (folder / DEV_VAULT_FILE).is_file():
        return None
    vault = Vault(folder / DEV_VAULT_FILE, (folder / DEV_VAULT_KEY_FILE).read_text().strip())
    return Signer.from_secret(vault.get(DEV_ENTRY)).public_key_b64


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


# --- trust ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a verifier trusts, by fingerprint (see the module docstring)."""

    fingerprints: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, keys: Iterable[str] = (), pins: Iterable[str] = ()) -> TrustedKeys:
        """Trust these base64 public ``keys`` and these ``sha256:...`` fingerprint ``pins``."""
        found = {fingerprint(k) for k in keys}
        found |= {_pin(p) for p in pins}
        return cls(frozenset(found))

    def trusts(self, public_key_b64: str) -> bool:
        try:
            return fingerprint(public_key_b64) in self.fingerprints
        except (binascii.Error, ValueError):
            return False

    def __bool__(self) -> bool:
        return bool(self.fingerprints)


def _pin(text: str) -> str:
    value = text.strip().lower()
    if not value.startswith(FINGERPRINT_PREFIX):
        value = FINGERPRINT_PREFIX + value
    digest = value[len(FINGERPRINT_PREFIX) :]
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(
            f"evidence.trusted_keys holds {text.strip()[:80]!r}, which is not a key "
            "fingerprint; copy the 'fingerprint sha256:...' line of 'stampless keys show'."
        )
    return value


def read_keyring(path: Path) -> list[str]:
    """The base64 public keys in a keyring file: one per line, ``#`` starts a comment."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"The keyring {path} cannot be read ({exc}); fix evidence.keyring."
        ) from None
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            load_public_key(entry)
        except ValueError:
            raise ConfigError(
                f"{path}:{number} is not a base64 Ed25519 public key; fix the keyring."
            ) from None
        keys.append(entry)
    return keys


def read_public_keys(value: str) -> list[str]:
    """A ``--pubkey`` argument: a base64 public key, or a file of them (a ``.pub`` file)."""
    text = value.strip()
    with contextlib.suppress(ValueError):
        load_public_key(text)
        return [text]
    path = Path(value)
    if path.is_file():
        try:
            return read_keyring(path)
        except ConfigError as exc:
            raise InputError(str(exc)) from None
    raise InputError(
        f"--pubkey {text[:60]!r} is neither a base64 Ed25519 public key nor a file of them."
    )


def trusted_keys(config: Config, extra: Iterable[str] = ()) -> TrustedKeys:
    """What this deployment's verifiers trust: pins, the keyring outside var/, ``extra``.

    Never a key found in var/: whoever could change the evidence could put one there.
    """
    keys = list(extra)
    ring = config.evidence.keyring
    if ring is not None:
        path = config.resolve(ring)
        if path.resolve().is_relative_to(config.var_dir.resolve()):
            raise ConfigError(
                f"evidence.keyring {path} is inside {config.var_dir}, which the keys must "
                "protect; keep the keyring outside var/ (e.g. /etc/stampless/keyring)."
            )
        keys += read_keyring(path)
    return TrustedKeys.of(keys, config.evidence.trusted_keys)


# --- signed documents (outbox verdicts, audit checkpoints) ---------------------------------


def sign_document(signer: Signer, document: dict[str, Any]) -> dict[str, str]:
    """The ``signature`` block of ``document`` (a JSON object without its signature)."""
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    return {
        "alg": ALG,
        "key_id": signer.key_id,
        "public_key": signer.public_key_b64,
        "value": base64.b64encode(signer.sign(canonical_json(unsigned))).decode(),
    }


def document_problems(document: dict[str, Any], trusted: TrustedKeys | None) -> list[str]:
    """Why a signed JSON document does not hold (empty when it does).

    ``trusted`` None checks the signature only (the document is self-consistent);
    otherwise its key must be trusted too.
    """
    sig = document.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != ALG:
        return ["it carries no Ed25519 signature"]
    public_key = str(sig.get("public_key", ""))
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    if not verify_signature(public_key, canonical_json(unsigned), str(sig.get("value", ""))):
        return ["the signature does not match: it was edited after signing"]
    if trusted is not None and not trusted.trusts(public_key):
        key_id = str(sig.get("key_id", "?"))[:16]
        return [f"signed by key {key_id}, which is not one of the trusted keys"]
    return []


# --- the production signer -----------------------------------------------------------------


def production_signer(config: Config, *, dev: bool = False) -> Signer:
    """The signer of a real deployment; with ``dev``, the development key instead.

    Raises ConfigError when no key is configured, or when the configured key is the
    development key or sits in a vault whose unlock key lies in the same folder: a key
    anyone who can read that folder could use protects nothing.
    """
    if dev:
        from loguru import logger

        logger.warning(
            "--dev: signing with the development key in {} (demos and tests only; nothing "
            "signed with it is trusted by a real deployment).",
            keys_dir(config),
        )
        return ensure_dev_key(config)
    ref = config.evidence.signing_key
    if not ref:
        raise ConfigError(
            "No signing key is configured (evidence.signing_key in robot.toml), and "
            "stampless does not sign evidence with a development key unless told to. Run "
            "'stampless keys init' and pin the key it prints, or pass --dev for demos and "
            "tests."
        )
    if ref.startswith("file:"):
        vault, _ = parse_file_ref(ref, config=config)
        if vault.resolve() == (keys_dir(config) / DEV_VAULT_FILE).resolve():
            raise ConfigError(
                f"evidence.signing_key points at the development key ({vault}); create a "
                "real one with 'stampless keys init', or pass --dev for demos and tests."
            )
        beside = _unlock_key_beside(vault)
        if beside is not None:
            raise ConfigError(
                f"The signing key's vault {vault} lies in one folder with {beside.name}, "
                f"which unlocks it; keep {VAULT_KEY_ENV} in the service's environment only "
                "and remove that file."
            )
    signer = load_signer(config)
    # Published for whoever pins it (`stampless keys show`); never trusted for being there.
    write_public_key(config, signer)
    return signer


def _unlock_key_beside(vault: Path) -> Path | None:
    """A small file in the vault's folder that holds the vault's key, if there is one."""
    import os

    key = os.environ.get(VAULT_KEY_ENV, "").strip()
    if not key or not vault.parent.is_dir():
        return None
    for entry in vault.parent.iterdir():
        try:
            small = entry.is_file() and entry.stat().st_size < 4096
            if small and entry.read_text(encoding="ascii", errors="ignore").strip() == key:
                return entry
        except OSError:
            continue
    return None
