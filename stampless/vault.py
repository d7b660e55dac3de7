"""Secrets: references in robot.toml, values only in memory, never in logs.

robot.toml never holds a secret, only a reference to one:

``env:NAME``
    the environment variable ``NAME``.
``file:PATH#NAME``
    the entry ``NAME`` of an encrypted file vault at ``PATH`` (relative to the folder of
    robot.toml). The vault is one file holding many named secrets as a Fernet token
    (AES-128-CBC + HMAC-SHA256, from ``cryptography``); it is unlocked by the key in the
    environment variable ``STAMPLESS_VAULT_KEY`` (make one with ``Vault.generate_key()``
    or ``stampless vault keygen``).
``keyring:SERVICE/NAME``
    the operating system's keyring, through the optional ``keyring`` package
    (``pip install 'stampless[keyring]'``).

A resolved value is wrapped in :class:`Secret`, whose ``repr``/``str`` print
``Secret('********')`` so that a secret cannot reach a log line, an exception or a
screenshot caption by accident; ``.reveal()`` is the one explicit way to the value.
Every resolved value is also registered, so the logging setup can scrub it from every
line it writes (:func:`known_secret_values`, :func:`redact`, :func:`scrub_record`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken

from stampless._files import write_atomic
from stampless.errors import ConfigError, SecretUnavailable

if TYPE_CHECKING:
    from stampless.config import Config

VAULT_KEY_ENV = "STAMPLESS_VAULT_KEY"
MASK = "********"
# Shorter values are not scrubbed from logs: replacing every "ab" in every line would
# make logs unreadable and protects nothing (a 3-character secret is no secret).
MIN_REDACT_LENGTH = 4

_registry_lock = threading.Lock()
_known: set[str] = set()


class Secret:
    """A secret value that does not print itself.

    ``str()``, ``repr()``, f-strings and ``%`` formatting all give ``Secret('********')``;
    call :meth:`reveal` at the single place the value is needed (typing a password).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        """The secret value itself. Never log, store or put it in an exception."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:
        # Pickling would write the value to disk or a queue without anyone asking.
        raise TypeError("a Secret cannot be pickled; pass its reference instead")


def register_secret(value: str) -> None:
    """Remember a secret value so log scrubbing can remove it (done by :class:`Secret`)."""
    if len(value) >= MIN_REDACT_LENGTH:
        with _registry_lock:
            _known.add(value)


def known_secret_values() -> frozenset[str]:
    """Every secret value resolved in this process, for the logging setup to scrub."""
    with _registry_lock:
        return frozenset(_known)


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret value (default: all known ones) replaced by ``********``."""
    values = known_secret_values() if secrets is None else frozenset(secrets)
    if not values or not text:
        return text
    # Longest first, so a secret that contains another is removed whole.
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= MIN_REDACT_LENGTH and value in text:
            text = text.replace(value, MASK)
    return text


def scrub_record(record: Any) -> None:
    """A loguru patcher: remove known secret values from the message and extra fields.

    Use as ``logger.configure(patcher=scrub_record)`` (the integrator's
    ``stampless._logging`` chains it with ID masking).
    """
    record["message"] = redact(record["message"])
    extra = record.get("extra")
    if extra:
        for key, value in list(extra.items()):
            if isinstance(value, str):
                extra[key] = redact(value)
            elif isinstance(value, Secret):
                extra[key] = MASK


# --------------------------------------------------------------------------- file vault


class Vault:
    """An encrypted file holding named secrets.

    The file is a Fernet token over a JSON object ``{name: value}``; it is written
    atomically with mode 0600, under an exclusive lock so that two ``set`` calls from
    different processes do not lose each other's entries.
    """

    def __init__(self, path: Path, key: str | bytes | Secret) -> None:
        self.path = Path(path)
        raw = key.reveal() if isinstance(key, Secret) else key
        try:
            self._fernet = Fernet(raw.encode() if isinstance(raw, str) else raw)
        except (ValueError, TypeError):
            raise ConfigError(
                f"The vault key for {self.path} is not a valid key; create one with "
                "'stampless vault keygen' and put it in STAMPLESS_VAULT_KEY."
            ) from None

    @staticmethod
    def generate_key() -> str:
        """A new random vault key (urlsafe base64 of 32 bytes) for ``STAMPLESS_VAULT_KEY``."""
        key = Fernet.generate_key().decode()
        register_secret(key)
        return key

    @classmethod
    def from_env(cls, path: Path, environ: dict[str, str] | None = None) -> Vault:
        """Open the vault at ``path`` with the key in ``STAMPLESS_VAULT_KEY``."""
        env = os.environ if environ is None else environ
        key = env.get(VAULT_KEY_ENV)
        if not key:
            raise ConfigError(
                f"The file vault {path} needs its key; set {VAULT_KEY_ENV} "
                "(create a key with 'stampless vault keygen')."
            )
        register_secret(key)
        return cls(path, key)

    def _read(self) -> dict[str, str]:
        try:
            token = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(
                f"The vault {self.path} cannot be read ({exc.__class__.__name__}); "
                "check its permissions."
            ) from None
        if not token.strip():
            return {}
        try:
            data = json.loads(self._fernet.decrypt(token.strip()))
        except InvalidToken:
            raise ConfigError(
                f"The vault {self.path} cannot be opened with this key; "
                f"check {VAULT_KEY_ENV} (it must be the key the vault was created with)."
            ) from None
        except ValueError:
            raise ConfigError(
                f"The vault {self.path} decrypts but is not a secret store; restore it "
                "from a backup."
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"The vault {self.path} is damaged; restore it from a backup.")
        return {str(k): str(v) for k, v in data.items()}

    def _write(self, data: dict[str, str]) -> None:
        token = self._fernet.encrypt(json.dumps(data, ensure_ascii=False).encode())
        write_atomic(self.path, token, mode=0o600)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def get(self, name: str) -> Secret:
        """The secret ``name``; a ConfigError naming the entry (never a value) if absent."""
        data = self._read()
        if name not in data:
            raise ConfigError(
                f"The vault {self.path} has no entry {name!r}; add it with "
                f"'stampless vault set {name}'."
            )
        return Secret(data[name])

    def set(self, name: str, value: str | Secret) -> None:
        """Store ``value`` under ``name``, replacing an existing entry."""
        _check_entry_name(name)
        plain = value.reveal() if isinstance(value, Secret) else value
        register_secret(plain)
        with self._locked():
            data = self._read()
            data[name] = plain
            self._write(data)

    def delete(self, name: str) -> bool:
        """Remove ``name``; True if it was there."""
        with self._locked():
            data = self._read()
            if name not in data:
                return False
            del data[name]
            self._write(data)
            return True

    def names(self) -> list[str]:
        """The entry names, sorted (never the values)."""
        return sorted(self._read())

    def __repr__(self) -> str:
        return f"Vault({str(self.path)!r})"


def _check_entry_name(name: str) -> None:
    if not name or len(name) > 128 or not all(ch.isalnum() or ch in "_-." for ch in name):
        raise ConfigError(
            "A vault entry name may hold only letters, digits, '_', '-' and '.' "
            "(at most 128 characters); choose another name."
        )


# --------------------------------------------------------------------------- references


def _root(config: Config | None) -> Path:
    return config.root if config is not None else Path.cwd()


def parse_file_ref(ref: str, *, config: Config | None = None) -> tuple[Path, str]:
    """Split ``file:PATH#NAME`` into the vault path (resolved against the root) and name."""
    body = ref[len("file:") :]
    path_text, sep, name = body.rpartition("#")
    if not sep or not path_text or not name:
        raise ConfigError(
            f"Secret reference {ref!r} must look like file:PATH#NAME (for example "
            "file:var/vault.enc#signing_key)."
        )
    path = Path(path_text)
    if not path.is_absolute():
        path = _root(config) / path
    return path, name


def resolve_secret(
    ref: str, *, config: Config | None = None, environ: dict[str, str] | None = None
) -> Secret:
    """Resolve a reference (``env:NAME``, ``file:PATH#NAME``, ``keyring:SERVICE/NAME``).

    Raises :class:`~stampless.errors.SecretUnavailable` (a ConfigError) naming the
    reference, never the value, when the secret is missing or the reference is malformed.
    """
    env = os.environ if environ is None else environ
    if ref.startswith("env:"):
        name = ref[len("env:") :]
        if not name:
            raise SecretUnavailable(f"Secret reference {ref!r} must name a variable: env:NAME.")
        value = env.get(name)
        if value is None or value == "":
            raise SecretUnavailable(
                f"Secret {ref} is not set; export the environment variable {name} "
                "before starting stampless."
            )
        return Secret(value)
    if ref.startswith("file:"):
        try:
            path, name = parse_file_ref(ref, config=config)
            if not path.is_file():
                raise SecretUnavailable(
                    f"Secret {ref}: the vault file {path} does not exist; create the entry "
                    f"with 'stampless vault set {name} --path {path}'."
                )
            entries = Vault.from_env(path, environ=dict(env))._read()
        except SecretUnavailable:
            raise
        except ConfigError as exc:  # no vault key, a wrong one, a damaged vault
            raise SecretUnavailable(str(exc)) from None
        if name not in entries:
            raise SecretUnavailable(
                f"Secret {ref} is not in the vault; add it with "
                f"'stampless vault set {name} --path {path}'."
            )
        return Secret(entries[name])
    if ref.startswith("keyring:"):
        service, sep, name = ref[len("keyring:") :].partition("/")
        if not sep or not service or not name:
            raise SecretUnavailable(
                f"Secret reference {ref!r} must look like keyring:SERVICE/NAME."
            )
        try:
            import keyring  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise SecretUnavailable(
                f"Secret {ref} needs the 'keyring' package; install it with "
                "\"pip install 'stampless[keyring]'\" or use an env: or file: reference."
            ) from None
        try:
            value = keyring.get_password(service, name)
        except Exception as exc:  # keyring backends raise their own error types
            raise SecretUnavailable(
                f"Secret {ref}: the OS keyring failed ({exc.__class__.__name__}); check "
                "that a keyring backend is available."
            ) from None
        if value is None:
            raise SecretUnavailable(
                f"Secret {ref} is not in the OS keyring; store it with "
                f"'keyring set {service} {name}'."
            )
        return Secret(value)
    raise SecretUnavailable(
        # Not echoed: a value without a scheme may be the secret itself.
        "A secret reference has an unknown scheme; use env:NAME, file:PATH#NAME or "
        "keyring:SERVICE/NAME (never the secret itself)."
    )


# --------------------------------------------------------------------------- preflight


def secret_references(config: Config, *, signing: bool = True) -> list[tuple[str, str]]:
    """Every secret reference robot.toml holds, as ``(where, reference)``."""
    from stampless.config import SECRET_SCHEMES

    refs: list[tuple[str, str]] = []
    for name, system in config.systems.items():
        for account in system.accounts:
            refs.append((f"systems.{name}, account {account.name}: password", account.password))
            if account.totp:
                refs.append((f"systems.{name}, account {account.name}: totp", account.totp))
        if system.http_credentials is not None:
            refs.append((f"systems.{name}.http_credentials", system.http_credentials.password))
        if system.proxy is not None and system.proxy.password:
            refs.append((f"systems.{name}.proxy", system.proxy.password))
        refs += [
            (f"systems.{name}.extra_http_headers.{header}", value)
            for header, value in system.extra_http_headers.items()
            if value.startswith(SECRET_SCHEMES)
        ]
    optional = {
        "evidence.signing_key": config.evidence.signing_key if signing else None,
        "outbox.webhook.token": config.outbox.webhook.token if config.outbox.webhook else None,
        "intake.token": config.intake.token,
        "review.secret_key": config.review.secret_key,
        "store.url": config.store.url if config.store.backend == "postgres" else None,
    }
    refs += [(where, ref) for where, ref in optional.items() if ref]
    return refs


def unresolved_secrets(
    config: Config, *, signing: bool = True, environ: dict[str, str] | None = None
) -> list[tuple[str, str, SecretUnavailable]]:
    """The references of :func:`secret_references` that do not resolve, with the reason."""
    missing = []
    for where, ref in secret_references(config, signing=signing):
        try:
            resolve_secret(ref, config=config, environ=environ)
        except SecretUnavailable as exc:
            missing.append((where, ref, exc))
    return missing


def require_secrets(config: Config) -> None:
    """Raise :class:`SecretUnavailable` unless every secret robot.toml names resolves.

    ``run``, ``schedule`` and ``verify`` call it before taking any work, so a secret
    that is not set stops them at once instead of failing item after item. The signing
    key is left to :func:`stampless.signing.production_signer`, which says more.
    """
    missing = unresolved_secrets(config, signing=False)
    if not missing:
        return
    where, _, first = missing[0]
    others = [ref for _, ref, _ in missing[1:]]
    more = ""
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        more = f" Not set either: {shown}."
    hint = ""
    if any(ref.startswith("env:") for _, ref, _ in missing):
        hint = (
            " For the emulated systems of 'stampless fixtures serve', "
            'eval "$(stampless fixtures env)" sets them.'
        )
    raise SecretUnavailable(
        f"{first} (robot.toml: {where}).{more}{hint} 'stampless doctor' checks them all; "
        "nothing was started."
    )
