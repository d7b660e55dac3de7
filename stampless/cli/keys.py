"""``stampless keys init|show`` (the signing key) and ``stampless vault ...`` (the file vault).

Secret values are read from stdin, never from the command line (where ``ps`` and shell
history would see them), and printed only when the user must copy one into their
environment (``export NAME=...`` for an ``env:`` reference or a new vault key).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stampless.cli._common import console, err_console, get_config
from stampless.errors import ConfigError, InputError

if TYPE_CHECKING:
    from stampless.vault import Vault

keys_app = typer.Typer(help="The deployment's Ed25519 key that signs evidence manifests.")
vault_app = typer.Typer(help="The encrypted file vault (secrets referenced as file:PATH#NAME).")

DEFAULT_VAULT = "vault.enc"


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _open_vault_for_write(path: Path) -> tuple[Vault, str | None]:
    """The vault at ``path``; a new vault key (to print) if the vault is created now."""
    from stampless.vault import VAULT_KEY_ENV
    from stampless.vault import Vault as _Vault

    if os.environ.get(VAULT_KEY_ENV):
        return _Vault.from_env(path), None
    if path.exists():
        raise ConfigError(
            f"The vault {path} exists but {VAULT_KEY_ENV} is not set; export the key it "
            "was created with and run again."
        )
    key = _Vault.generate_key()
    return _Vault(path, key), key


@keys_app.command("init")
def init_cmd(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="File vault to keep the key in, when robot.toml names none."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Create the signing key where evidence.signing_key points and print its public key."""
    from stampless.signing import Signer, fingerprint, keys_dir, write_public_key
    from stampless.vault import VAULT_KEY_ENV, Vault, parse_file_ref, resolve_secret

    config = get_config(required=False)
    ref = config.evidence.signing_key
    if out is not None:
        ref = f"file:{_rel(out, config.root)}#signing_key"
    if not ref:
        raise ConfigError(
            "evidence.signing_key is not set; add signing_key = "
            '"file:/etc/stampless/vault.enc#signing_key" under [evidence] in robot.toml '
            "(a vault outside var/), or pass --out PATH."
        )
    if not force:
        exists = False
        if ref.startswith("file:"):
            path, name = parse_file_ref(ref, config=config)
            exists = (
                path.exists()
                and bool(os.environ.get(VAULT_KEY_ENV))
                and (name in Vault.from_env(path).names())
            )
        else:
            try:
                resolve_secret(ref, config=config)
                exists = True
            except ConfigError:
                exists = False
        if exists:
            raise InputError(
                f"A signing key already exists at {ref}; pass --force to replace it (bundles "
                f"signed by the old key still verify: its public key stays in {keys_dir(config)})."
            )

    signer = Signer.generate()
    if ref.startswith("env:"):
        name = ref[len("env:") :]
        err_console.print(
            "Set this in the service's environment (it is the private key; keep it secret, "
            "it is not stored anywhere):",
            markup=False,
            soft_wrap=True,
        )
        print(f"export {name}={signer.private_b64().reveal()}")
    elif ref.startswith("file:"):
        path, name = parse_file_ref(ref, config=config)
        vault, new_key = _open_vault_for_write(path)
        vault.set(name, signer.private_b64())
        if new_key is not None:
            err_console.print(
                f"Created the vault {path}. Its key is printed once; keep it secret and set "
                f"it wherever stampless runs:",
                markup=False,
                soft_wrap=True,
            )
            print(f"export {VAULT_KEY_ENV}={new_key}")
    elif ref.startswith("keyring:"):
        service, _, name = ref[len("keyring:") :].partition("/")
        try:
            import keyring  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise ConfigError(
                "keyring: references need the 'keyring' package; install it with "
                "\"pip install 'stampless[keyring]'\"."
            ) from None
        keyring.set_password(service, name, signer.private_b64().reveal())
    pub = write_public_key(config, signer)
    _print_key(signer.public_key_b64)
    console.print(f"written to {pub}", markup=False, soft_wrap=True)
    console.print(
        "Verifiers trust only pinned keys: add the fingerprint to robot.toml under "
        f'[evidence]: trusted_keys = ["{fingerprint(signer.public_key_b64)}"] (keep earlier '
        "ones so older bundles still verify), and give the public key to whoever checks "
        "verdicts elsewhere.",
        markup=False,
        soft_wrap=True,
    )
    if out is not None and config.evidence.signing_key != ref:
        console.print(
            f'Add to robot.toml under [evidence]: signing_key = "{ref}"',
            markup=False,
            soft_wrap=True,
        )


@keys_app.command("show")
def show_cmd() -> None:
    """Print the deployment's public key and key id (no secret needed)."""
    from stampless.signing import PUBLIC_KEY_FILE, keys_dir, load_public_key

    config = get_config(required=False)
    pub = keys_dir(config) / PUBLIC_KEY_FILE
    if not pub.is_file():
        raise ConfigError(
            f"No public key at {pub}; create the signing key with 'stampless keys init'."
        )
    text = pub.read_text(encoding="ascii").strip()
    try:
        load_public_key(text)
    except ValueError:
        raise ConfigError(f"{pub} does not hold a public key; run 'stampless keys init'.") from None
    _print_key(text)


def _print_key(public_key_b64: str) -> None:
    import base64

    from stampless.signing import fingerprint, key_id_of

    console.print(f"public key  {public_key_b64}", markup=False, soft_wrap=True)
    console.print(f"key id      {key_id_of(base64.b64decode(public_key_b64))}", markup=False)
    console.print(f"fingerprint {fingerprint(public_key_b64)}", markup=False, soft_wrap=True)


def _vault_path(path: Path | None) -> Path:
    config = get_config(required=False)
    if path is None:
        return config.var_dir / DEFAULT_VAULT
    return path if path.is_absolute() else Path.cwd() / path


PathOption = Annotated[
    Path | None, typer.Option("--path", help="The vault file (default <var>/vault.enc).")
]


@vault_app.command("set")
def vault_set(
    name: Annotated[str, typer.Argument(help="Entry name.")], path: PathOption = None
) -> None:
    """Store a secret read from stdin (one line) under NAME."""
    from stampless.vault import Secret

    target = _vault_path(path)
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"Value for {name}: ")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise InputError(
            "No value on stdin; pipe the secret in, e.g. "
            "'printf %s \"$X\" | stampless vault set NAME'."
        )
    vault, new_key = _open_vault_for_write(target)
    vault.set(name, Secret(value))
    if new_key is not None:
        from stampless.vault import VAULT_KEY_ENV

        err_console.print(
            f"Created the vault {target}. Its key is printed once; keep it secret:", markup=False
        )
        print(f"export {VAULT_KEY_ENV}={new_key}")
    console.print(f"stored {name} in {target}", markup=False, soft_wrap=True)


@vault_app.command("ls")
def vault_ls(path: PathOption = None) -> None:
    """List the entry names (never the values)."""
    from stampless.vault import Vault

    target = _vault_path(path)
    if not target.exists():
        raise InputError(f"No vault at {target}; create one with 'stampless vault set NAME'.")
    for entry in Vault.from_env(target).names():
        console.print(entry, markup=False, soft_wrap=True)


@vault_app.command("rm")
def vault_rm(
    name: Annotated[str, typer.Argument(help="Entry name.")], path: PathOption = None
) -> None:
    """Remove an entry."""
    from stampless.vault import Vault

    target = _vault_path(path)
    if not Vault.from_env(target).delete(name):
        raise InputError(f"The vault {target} has no entry {name!r}.")
    console.print(f"removed {name}", markup=False, soft_wrap=True)


@vault_app.command("keygen")
def vault_keygen() -> None:
    """Print a new random vault key for STAMPLESS_VAULT_KEY."""
    from stampless.vault import Vault

    print(Vault.generate_key())


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(vault_app, name="vault")
