"""A helpdesk service report: Latin fields, printed in English, robot tier."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from stampless import DocumentType, FieldSpec, IsoDate, PersonName, Rule, Text, Tier


class ServiceReportClaim(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    ticket: Text
    reporter: PersonName
    opened_on: IsoDate


DOCUMENT = DocumentType(
    name="service_report",
    title="Service report",
    tier=Tier.robot,
    system="tracker",
    key_field="ticket",
    claim_model=ServiceReportClaim,
    other_labels=("SERVICE REPORT", "Subject"),
    fields=(
        FieldSpec(
            name="ticket",
            labels=("Ticket No.",),
            kind="text",
            whitelist="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-",
        ),
        FieldSpec(name="reporter", labels=("Reporter",), kind="name", rule=Rule.name, max_chars=40),
        FieldSpec(name="opened_on", labels=("Opened on",), kind="date"),
    ),
)
