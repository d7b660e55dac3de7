"""参保缴费证明 (social-security payment record): manual tier, confidential.

Its fields are described in docs/document-types.md. Loaded by file path from robot.toml
(``[types.social_security_record] task = ...``).
缴费起止年月 prints two months on one line: period_from is the first, period_to the
second.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from stampless import (
    Count,
    DocumentType,
    FieldSpec,
    PersonName,
    ResidentId,
    Rule,
    Text,
    Tier,
    YearMonth,
)


class SocialSecurityClaim(BaseModel):
    """What an application states about a social-security payment record."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    person_id: ResidentId
    person_name: PersonName
    employer: Text | None = None
    period_from: YearMonth | None = None
    period_to: YearMonth | None = None
    months_paid: Count | None = None


DOCUMENT = DocumentType(
    name="social_security_record",
    title="参保缴费证明",
    tier=Tier.manual,
    system="social_security",
    key_field="person_id",
    claim_model=SocialSecurityClaim,
    other_labels=("险种", "编号", "特此证明"),
    fields=(
        FieldSpec(name="person_name", labels=("姓名",), kind="name", rule=Rule.name, max_chars=4),
        FieldSpec(
            name="person_id",
            labels=("社会保障号码", "保障号码"),
            kind="resident_id",
            whitelist="0123456789X",
        ),
        FieldSpec(name="employer", labels=("参保单位",), kind="text", rule=Rule.text),
        FieldSpec(name="period_from", labels=("缴费起止年月", "起止年月"), kind="month", part=0),
        FieldSpec(name="period_to", labels=("缴费起止年月", "起止年月"), kind="month", part=1),
        FieldSpec(
            name="months_paid",
            labels=("累计缴费月数", "缴费月数"),
            kind="integer",
            # Some offices print "66个月"; with digits only the re-read turns 个月 into digits.
            whitelist="0123456789个月",
        ),
    ),
)
