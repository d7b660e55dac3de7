"""``stampless fixtures issue-ecert``: signed e-certificates for tests and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stampless.cli._common import console
from stampless.cli.fixtures import fixtures_app


@fixtures_app.command("issue-ecert")
def issue_ecert_command(
    issuer: Annotated[str, typer.Option("--issuer", help="Issuing department id.")],
    doc_type: Annotated[str, typer.Option("--type", help="Document type.")],
    key_out: Annotated[
        Path, typer.Option("--key-out", help="Folder of issuer keys (created if missing).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write the e-certificates.")],
    record_key: Annotated[
        str | None, typer.Option("--record-key", help="Sign the seeded record with this key.")
    ] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Sign the first N records.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fixture records.")] = 7,
    revocation_list: Annotated[
        Path | None,
        typer.Option("--revocation-list", help="Also write the issuer's revocation list here."),
    ] = None,
    scans: Annotated[
        bool, typer.Option("--scans", help="Also render scans with the QR code printed on them.")
    ] = False,
    tampered: Annotated[
        bool, typer.Option("--tampered", help="Also write a forged copy of each certificate.")
    ] = False,
    difficulty: Annotated[
        str, typer.Option(help="How degraded the scans are: easy, normal or hard.")
    ] = "normal",
) -> None:
    """Sign e-certificates of seeded fixture records (JSON, QR PNG, scans, requests).

    The issuer's private key is ``KEY_OUT/ISSUER.key`` (mode 0600, created if missing);
    put the printed public key in robot.toml under ``[issuers.ISSUER] public_key``.
    """
    from stampless.ecert import ensure_issuer_key, public_key_b64
    from stampless.errors import InputError
    from stampless.fixtures.ecerts import write_ecerts
    from stampless.fixtures.records import DOC_TYPES

    if doc_type not in DOC_TYPES:
        raise InputError(f"Unknown document type {doc_type!r}; use one of {sorted(DOC_TYPES)}.")
    if difficulty not in ("easy", "normal", "hard"):
        raise InputError("--difficulty is easy, normal or hard.")
    key, created = ensure_issuer_key(key_out, issuer)
    written = write_ecerts(
        out,
        key,
        issuer,
        doc_type,
        count=count,
        record_key=record_key,
        seed=seed,
        revocation_list=revocation_list,
        scans=scans,
        tampered=tampered,
        difficulty=difficulty,
    )
    state = "created" if created else "existing"
    console.print(f"issuer {issuer} ({state} key {key_out / (issuer + '.key')})", markup=False)
    console.print(f'public_key = "{public_key_b64(key)}"', markup=False)
    for item in written:
        console.print(f"{item.request_path}  {item.expected_verdict}", markup=False)


def register(app: typer.Typer) -> None:
    """The command is added to ``fixtures_app`` on import; nothing else to register."""
