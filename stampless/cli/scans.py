"""``stampless fixtures scans``: write degraded certificate scans with ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stampless.cli._common import console


def register(app: typer.Typer) -> None:
    # The command lives under ``stampless fixtures``; ``app`` is the root it is added to.
    del app
    from stampless.cli.fixtures import fixtures_app

    @fixtures_app.command("scans")
    def scans_command(
        out_dir: Annotated[
            Path, typer.Argument(metavar="OUT_DIR", help="Folder to write the scans into.")
        ],
        doc_type: Annotated[
            str,
            typer.Option(
                "--type",
                help="marriage_certificate, business_license, social_security_record or "
                "work_permit.",
            ),
        ],
        count: Annotated[int, typer.Option(help="How many scans to write.")] = 10,
        seed: Annotated[int, typer.Option(help="Seed of the scan set (names, kinds, noise).")] = 7,
        difficulty: Annotated[str, typer.Option(help="easy, normal or hard.")] = "normal",
        altered_share: Annotated[
            float, typer.Option(help="Share of forged scans (one claim field altered).")
        ] = 0.3,
        absent_share: Annotated[
            float, typer.Option(help="Share of scans whose record does not exist.")
        ] = 0.1,
        records_seed: Annotated[
            int | None,
            typer.Option(help="Seed of the fixture records to draw from (default: --seed)."),
        ] = None,
        workers: Annotated[
            int, typer.Option(help="Processes rendering in parallel (same bytes either way).")
        ] = 1,
        split: Annotated[
            str,
            typer.Option(
                help="tune (the layouts and faces an OCR reader may be tuned on), heldout "
                "(a layout and faces tune never draws, other seeds: never tune on it) or "
                "classic (the two original layouts per type, flatbed scans only)."
            ),
        ] = "tune",
    ) -> None:
        """Render degraded scans with <name>.truth.json and <name>.request.json each."""
        from stampless.fixtures.scans import generate

        written = generate(
            out_dir,
            doc_type,
            count,
            seed,
            difficulty=difficulty,
            altered_share=altered_share,
            absent_share=absent_share,
            records_seed=records_seed,
            workers=workers,
            split=split,
        )
        kinds: dict[str, int] = {}
        for jpg in written:
            truth = json.loads(jpg.with_suffix(".truth.json").read_text(encoding="utf-8"))
            kinds[truth["expected_verdict"]] = kinds.get(truth["expected_verdict"], 0) + 1
            console.print(f"{jpg}  {truth['kind']}  expect {truth['expected_verdict']}")
        summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(kinds.items()))
        console.print(
            f"wrote {len(written)} {doc_type} scans ({split} split, {difficulty}) to {out_dir}"
            + (f": {summary}" if summary else "")
        )
