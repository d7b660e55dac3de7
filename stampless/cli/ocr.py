"""``stampless ocr IMAGE --type T [--json]``: OCR and field extraction only.

Reads the document type from robot.toml when it defines it; without robot.toml (or
when the type is not in it) the three bundled task modules in the repository's tasks/
folder are used, so the command works on a fresh checkout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stampless.cli._common import console, get_config
from stampless.errors import ConfigError


def register(app: typer.Typer) -> None:
    @app.command("ocr")
    def ocr_command(
        image: Annotated[Path, typer.Argument(metavar="IMAGE", help="The scan to read.")],
        doc_type: Annotated[
            str,
            typer.Option(
                "--type",
                help="Document type: marriage_certificate, business_license, "
                "social_security_record, or one robot.toml defines.",
            ),
        ],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        steps: Annotated[
            Path | None,
            typer.Option(help="Folder to save each preprocessing step's image into."),
        ] = None,
    ) -> None:
        """Read a scan's fields with OCR and print them with their confidence."""
        from stampless.doctype import bundled_tasks_dir, load_doctype, load_doctype_file
        from stampless.ocr import read_document

        config = get_config(required=False)
        if doc_type in config.types:
            doctype = load_doctype(config, doc_type)
        else:
            bundled = bundled_tasks_dir() / f"{doc_type}.py"
            if not doc_type.isidentifier() or not bundled.is_file():
                known = sorted(
                    set(config.types) | {p.stem for p in bundled_tasks_dir().glob("*.py")}
                )
                raise ConfigError(
                    f"Unknown document type {doc_type!r}; use one of: {', '.join(known)}."
                )
            doctype = load_doctype_file(bundled)
        result = read_document(image, doctype, config.ocr, steps_dir=steps)
        if as_json:
            out = {
                "type": result.type,
                "fields": {
                    name: {"value": f.value, "confidence": f.confidence, "valid": f.valid}
                    for name, f in result.fields.items()
                },
                "seconds": result.seconds,
            }
            typer.echo(json.dumps(out, ensure_ascii=False))
            return
        from rich.table import Table

        table = Table(title=f"{result.type}  ({result.seconds:.2f} s)")
        table.add_column("field")
        table.add_column("value")
        table.add_column("confidence", justify="right")
        table.add_column("valid")
        for name, f in result.fields.items():
            table.add_row(
                name,
                "" if f.value is None else f.value,
                f"{f.confidence:.2f}",
                "yes" if f.valid else "no",
            )
        console.print(table)
