"""``stampless ocr`` (OCR and field extraction only) and ``stampless check`` (the decision
for one scan, offline, through the pipeline's own reading and decision code).

Both read the document type from robot.toml when it defines it; without robot.toml (or
when the type is not in it) the bundled task modules in the repository's tasks/ folder
are used, so the commands work on a fresh checkout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stampless.cli._common import console, exit_with, get_config
from stampless.errors import ConfigError, InputError

if TYPE_CHECKING:
    from stampless.config import Config
    from stampless.doctype import DocumentType
    from stampless.models import OcrResult

TYPE_HELP = (
    "Document type: marriage_certificate, business_license, social_security_record, "
    "or one robot.toml defines."
)
MAX_JSON_BYTES = 1024 * 1024


def document_type(config: Config, name: str) -> DocumentType:
    """The document type ``name`` from robot.toml, else a bundled task module."""
    from stampless.doctype import bundled_tasks_dir, load_doctype, load_doctype_file

    if name in config.types:
        return load_doctype(config, name)
    bundled = bundled_tasks_dir() / f"{name}.py"
    if not name.isidentifier() or not bundled.is_file():
        known = sorted(set(config.types) | {p.stem for p in bundled_tasks_dir().glob("*.py")})
        raise ConfigError(f"Unknown document type {name!r}; use one of: {', '.join(known)}.")
    return load_doctype_file(bundled)


def _thresholds(config: Config, name: str) -> dict[str, float]:
    return config.types[name].thresholds if name in config.types else {}


def register(app: typer.Typer) -> None:
    @app.command("ocr")
    def ocr_command(
        image: Annotated[Path, typer.Argument(metavar="IMAGE", help="The scan to read.")],
        doc_type: Annotated[str, typer.Option("--type", help=TYPE_HELP)],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        steps: Annotated[
            Path | None,
            typer.Option(help="Folder to save each preprocessing step's image into."),
        ] = None,
    ) -> None:
        """Read a scan's fields with OCR and print them with their confidence."""
        from stampless.ocr import read_document

        config = get_config(required=False)
        doctype = document_type(config, doc_type)
        result = read_document(
            image, doctype, config.ocr, steps_dir=steps, thresholds=_thresholds(config, doc_type)
        )
        if as_json:
            out = {
                "type": result.type,
                "fields": {
                    name: {
                        "value": f.value,
                        "confidence": f.confidence,
                        "valid": f.valid,
                        "source": f.source,
                    }
                    for name, f in result.fields.items()
                },
                "engine": result.engine,
                "seconds": result.seconds,
            }
            typer.echo(json.dumps(out, ensure_ascii=False))
            return
        _print_reading(result)

    @app.command("check")
    def check_command(
        scan: Annotated[Path, typer.Argument(metavar="SCAN", help="The scan to decide.")],
        doc_type: Annotated[str, typer.Option("--type", help=TYPE_HELP)],
        claim_file: Annotated[
            Path, typer.Option("--claim", metavar="CLAIM.json", help="The claim, a JSON object.")
        ],
        record_file: Annotated[
            Path,
            typer.Option(
                "--record",
                metavar="RECORD.json",
                help='The department record as a robot returns it: {"fields": {...}}.',
            ),
        ],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Decide one scan offline: read it, verify each field against the record, compare.

        Exits 0 verified, 1 mismatch, 3 needs a person; no robot, no browser.
        """
        from stampless.compare import verify_and_decide
        from stampless.ocr import read_document
        from stampless.verify import EXIT_CODES

        config = get_config(required=False)
        doctype = document_type(config, doc_type)
        claim = _claim(doctype, claim_file)
        record = _record(doctype, record_file)
        thresholds = _thresholds(config, doc_type)
        result = read_document(scan, doctype, config.ocr, thresholds=thresholds)
        _, decision = verify_and_decide(
            doctype, claim, result, record, config.ocr, thresholds=thresholds
        )
        if as_json:
            out = {
                "verdict": decision.verdict.value,
                "fields": [f.model_dump(mode="json") for f in decision.fields],
                "reasons": decision.reasons,
                "engine": result.engine,
                "seconds": result.seconds,
            }
            typer.echo(json.dumps(out, ensure_ascii=False))
        else:
            _print_decision(decision, result)
        exit_with(EXIT_CODES[decision.verdict])


def _claim(doctype: DocumentType, path: Path) -> Any:
    from pydantic import ValidationError

    from stampless._files import read_json_file
    from stampless.models import describe_validation_error

    data = read_json_file(path, max_bytes=MAX_JSON_BYTES, what="claim")
    if not isinstance(data, dict):
        raise InputError(f"{path}: a claim is a JSON object of the document type's fields.")
    try:
        return doctype.claim_model.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{path}: claim {describe_validation_error(exc)}") from None


def _record(doctype: DocumentType, path: Path) -> Any:
    from stampless._files import read_json_file
    from stampless.models import Record

    data = read_json_file(path, max_bytes=MAX_JSON_BYTES, what="record")
    fields = data.get("fields") if isinstance(data, dict) else None
    if not isinstance(fields, dict) or not all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in fields.values()
    ):
        raise InputError(
            f'{path}: a record is {{"fields": {{"name": "value", ...}}}} with text or number '
            "values, as a robot returns it."
        )
    status = data.get("status", "valid")
    if not isinstance(status, str):
        raise InputError(f'{path}: "status" must be a string such as "valid" or "revoked".')
    values = {str(k): str(v) for k, v in fields.items()}
    return Record(
        system=doctype.system or "offline",
        key=values.get(doctype.key_field, ""),
        fields=values,
        status=status,
    )


def _print_reading(result: OcrResult) -> None:
    from rich.table import Table

    table = Table(title=f"{result.type}  ({result.engine}, {result.seconds:.2f} s)")
    table.add_column("field")
    table.add_column("value")
    table.add_column("confidence", justify="right")
    table.add_column("valid")
    table.add_column("from")
    for name, f in result.fields.items():
        table.add_row(
            name,
            "" if f.value is None else f.value,
            f"{f.confidence:.2f}",
            "yes" if f.valid else "no",
            f.source or "",
        )
    console.print(table)


def _print_decision(decision: Any, result: OcrResult) -> None:
    from rich.table import Table

    table = Table(title=f"{result.type}: {decision.verdict.value}  ({result.seconds:.2f} s)")
    for column in ("field", "claimed", "read", "record", "status", "margin"):
        table.add_column(column, justify="right" if column == "margin" else "left")
    for f in decision.fields:
        margin = "" if f.check is None or f.check.margin is None else f"{f.check.margin:.1f}"
        table.add_row(f.name, f.claimed or "", f.ocr or "", f.record or "", f.status.value, margin)
    console.print(table)
    for reason in decision.reasons:
        console.print(f"- {reason}")
