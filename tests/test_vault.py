"""Secrets and signing keys: references resolve, values never print, keys are created safely."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from loguru import logger

from stampless.config import Config, EvidenceConfig, load_config
from stampless.errors import ConfigError
from stampless.signing import (
    Signer,
    dev_public_key,
    ensure_dev_key,
    load_signer,
    verify_signature,
)
from stampless.vault import (
    VAULT_KEY_ENV,
    Secret,
    Vault,
    known_secret_values,
    redact,
    resolve_secret,
    scrub_record,
)

REPO = Path(__file__).resolve().parents[1]


def _config(root: Path, signing_key: str | None = None) -> Config:
    cfg = Config(evidence=EvidenceConfig(signing_key=signing_key))
    cfg.root = root
    return cfg


def run_cli(*args: str, cwd: Path, env: dict[str, str], stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "stampless", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_secret_never_prints_its_value() -> None:
    s = Secret("hunter2-very-secret")
    assert s.reveal() == "hunter2-very-secret"
    for text in (repr(s), str(s), f"{s}", f"{s!r}", str([s]), str({"pw": s})):
        assert "hunter2" not in text
        assert "********" in text
    with pytest.raises(TypeError):
        pickle.dumps(s)
    assert Secret("abcd") == Secret("abcd")
    assert Secret("abcd") != Secret("abce")


def test_env_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAMPLESS_TEST_PW", "pw-from-env-42")
    assert resolve_secret("env:STAMPLESS_TEST_PW").reveal() == "pw-from-env-42"
    assert "pw-from-env-42" in known_secret_values()
    monkeypatch.delenv("STAMPLESS_TEST_PW")
    with pytest.raises(ConfigError, match="env:STAMPLESS_TEST_PW") as info:
        resolve_secret("env:STAMPLESS_TEST_PW")
    assert "pw-from-env-42" not in str(info.value)


def test_unknown_scheme_does_not_echo_the_value() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_secret("plaintext-password-123")
    assert "plaintext-password-123" not in str(info.value)


def test_file_vault_roundtrip_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Vault.generate_key()
    path = tmp_path / "var" / "vault.enc"
    vault = Vault(path, key)
    vault.set("civil_pw", "correct horse battery")
    vault.set("civil_totp", Secret("JBSWY3DPEHPK3PXP"))
    assert vault.names() == ["civil_pw", "civil_totp"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert b"correct horse" not in raw and b"civil_pw" not in raw  # names are secret too

    monkeypatch.setenv(VAULT_KEY_ENV, key)
    cfg = _config(tmp_path)
    assert resolve_secret("file:var/vault.enc#civil_pw", config=cfg).reveal() == (
        "correct horse battery"
    )
    with pytest.raises(ConfigError, match=r"file:var/vault\.enc#nope") as info:
        resolve_secret("file:var/vault.enc#nope", config=cfg)
    assert "correct horse" not in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_secret("file:var/other.enc#civil_pw", config=cfg)

    monkeypatch.setenv(VAULT_KEY_ENV, Vault.generate_key())
    with pytest.raises(ConfigError, match="cannot be opened with this key"):
        resolve_secret("file:var/vault.enc#civil_pw", config=cfg)
    monkeypatch.delenv(VAULT_KEY_ENV)
    with pytest.raises(ConfigError, match=VAULT_KEY_ENV):
        resolve_secret("file:var/vault.enc#civil_pw", config=cfg)

    assert vault.delete("civil_totp") is True
    assert vault.delete("civil_totp") is False
    assert vault.names() == ["civil_pw"]


def test_keyring_reference_is_a_clear_config_error() -> None:
    # keyring is an optional extra; without it (or without the entry) the error says what to do.
    with pytest.raises(ConfigError, match="keyring"):
        resolve_secret("keyring:stampless-test-service/definitely-missing")
    with pytest.raises(ConfigError, match="keyring:SERVICE/NAME"):
        resolve_secret("keyring:no-slash")


def _set_many(path: str, key: str, prefix: str) -> None:
    vault = Vault(Path(path), key)
    for i in range(8):
        vault.set(f"{prefix}{i}", f"value-{prefix}-{i}")


def test_concurrent_vault_writers_lose_nothing(tmp_path: Path) -> None:
    key = Vault.generate_key()
    path = tmp_path / "vault.enc"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_set_many, args=(str(path), key, p)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(Vault(path, key).names()) == 16


def test_redaction_in_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAMPLESS_TEST_PW2", "s3cr3t-Passw0rd")
    secret = resolve_secret("env:STAMPLESS_TEST_PW2")
    assert redact("login with s3cr3t-Passw0rd ok") == "login with ******** ok"
    assert redact("abc", ["abc"]) == "abc"  # too short to be worth scrubbing
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message} {extra}", level="INFO")
    try:
        logger.patch(scrub_record).bind(pw=secret.reveal()).info(
            "typed {} into the form", secret.reveal()
        )
    finally:
        logger.remove(sink)
    assert lines, "the log line was not written"
    assert "s3cr3t-Passw0rd" not in "".join(lines)
    assert "********" in lines[0]


def test_signer_roundtrip_and_key_id() -> None:
    signer = Signer.generate()
    sig = signer.sign(b"manifest bytes")
    import base64

    b64 = base64.b64encode(sig).decode()
    assert verify_signature(signer.public_key_b64, b"manifest bytes", b64)
    assert not verify_signature(signer.public_key_b64, b"manifest bytez", b64)
    assert not verify_signature(Signer.generate().public_key_b64, b"manifest bytes", b64)
    assert len(signer.key_id) == 16
    again = Signer.from_secret(signer.private_b64())
    assert again.key_id == signer.key_id
    assert signer.private_b64().reveal() not in repr(signer)
    with pytest.raises(ConfigError, match="keys init"):
        Signer.from_secret("not a key")


def test_load_signer_needs_a_configured_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="keys init"):
        load_signer(_config(tmp_path))
    signer = Signer.generate()
    monkeypatch.setenv("STAMPLESS_TEST_SIGNING", signer.private_b64().reveal())
    loaded = load_signer(_config(tmp_path, "env:STAMPLESS_TEST_SIGNING"))
    assert loaded.key_id == signer.key_id


def test_ensure_dev_key_is_created_once(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    first = ensure_dev_key(cfg)
    second = ensure_dev_key(cfg)
    assert first.key_id == second.key_id
    keys = tmp_path / "var" / "keys"
    assert stat.S_IMODE((keys / "dev-vault.key").stat().st_mode) == 0o600
    assert (keys / "signing.pub").read_text().strip() == first.public_key_b64
    assert dev_public_key(cfg) == first.public_key_b64
    assert first.private_b64().reveal().encode() not in (keys / "dev-vault.enc").read_bytes()


def test_cli_keys_init_env_reference_prints_export_and_writes_no_secret(tmp_path: Path) -> None:
    (tmp_path / "robot.toml").write_text(
        '[evidence]\nsigning_key = "env:STAMPLESS_SIGNING_KEY"\n', encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if k != "STAMPLESS_SIGNING_KEY"}
    res = run_cli("keys", "init", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    export = next(line for line in res.stdout.splitlines() if line.startswith("export "))
    private = export.split("=", 1)[1]
    signer = Signer.from_secret(private)
    assert signer.public_key_b64 in res.stdout
    pub = tmp_path / "var" / "keys" / "signing.pub"
    assert pub.read_text().strip() == signer.public_key_b64
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert private not in file.read_text(errors="replace"), file

    env["STAMPLESS_SIGNING_KEY"] = private
    again = run_cli("keys", "init", cwd=tmp_path, env=env)
    assert again.returncode == 2 and "--force" in again.stderr
    show = run_cli("keys", "show", cwd=tmp_path, env=env)
    assert show.returncode == 0 and signer.key_id in show.stdout


def test_cli_vault_set_reads_stdin_and_keys_init_into_file_vault(tmp_path: Path) -> None:
    (tmp_path / "robot.toml").write_text(
        '[evidence]\nsigning_key = "file:var/vault.enc#signing_key"\n', encoding="utf-8"
    )
    key = Vault.generate_key()
    env = {**os.environ, VAULT_KEY_ENV: key}
    res = run_cli("vault", "set", "civil_pw", cwd=tmp_path, env=env, stdin="pw-on-stdin-77\n")
    assert res.returncode == 0, res.stderr
    assert "pw-on-stdin-77" not in res.stdout + res.stderr
    init = run_cli("keys", "init", cwd=tmp_path, env=env)
    assert init.returncode == 0, init.stderr
    assert "export" not in init.stdout  # the vault already had its key
    ls = run_cli("vault", "ls", cwd=tmp_path, env=env)
    assert ls.stdout.split() == ["civil_pw", "signing_key"]
    cfg = load_config(tmp_path / "robot.toml", environ={})
    os.environ[VAULT_KEY_ENV] = key
    try:
        signer = load_signer(cfg)
        assert resolve_secret("file:var/vault.enc#civil_pw", config=cfg).reveal() == (
            "pw-on-stdin-77"
        )
    finally:
        del os.environ[VAULT_KEY_ENV]
    assert json.loads(json.dumps(signer.public_key_b64)) in init.stdout


LOGGING_SCRIPT = """
import sys
from loguru import logger
from stampless.config import load_config
from stampless._logging import setup_logging
from stampless.vault import resolve_secret
config = load_config(sys.argv[1])
setup_logging(config, console=False)
pw = resolve_secret("file:var/vault.enc#civil_pw", config=config)
logger.info("typing {} for account civil01", pw.reveal())
import os
logger.debug("unlocked with {}", os.environ["STAMPLESS_VAULT_KEY"])
logger.info("vault key was {}", os.environ["STAMPLESS_VAULT_KEY"])
logger.bind(holder_id=sys.argv[2]).warning("looked up holder {}", sys.argv[2])
try:
    raise RuntimeError("form echoed " + pw.reveal())
except RuntimeError:
    logger.exception("robot step failed")
print("done")
"""


def test_logs_hold_no_secret_vault_key_or_full_id(tmp_path: Path) -> None:
    from stampless.checksums import resident_id_check_char

    (tmp_path / "robot.toml").write_text("", encoding="utf-8")
    key = Vault.generate_key()
    Vault(tmp_path / "var" / "vault.enc", key).set("civil_pw", "Pa55-w0rd-civil")
    body = "32010219900101123"
    full_id = body + resident_id_check_char(body)
    env = {**os.environ, VAULT_KEY_ENV: key}
    res = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT, str(tmp_path / "robot.toml"), full_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "done" in res.stdout, res.stderr
    logs = "".join(p.read_text() for p in (tmp_path / "var" / "log").rglob("*") if p.is_file())
    assert "typing ******** for account civil01" in logs
    assert "robot step failed" in logs and "vault key was ********" in logs
    for leak in ("Pa55-w0rd-civil", key, full_id):
        assert leak not in logs
    assert full_id[:6] in logs  # masked, not dropped
