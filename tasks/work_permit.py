"""外国人工作许可证 (Foreigner's Work Permit): exit-entry administration, robot tier.

Loaded by file path from robot.toml (``[types.work_permit] task = ...``). Labels are
bilingual (姓名 Name, 护照号码 Passport No.); the holder's name, the nationality and
the passport number are printed in Latin letters, the employer in Chinese.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from stampless import (
    DocumentType,
    FieldSpec,
    IsoDate,
    LatinText,
    PersonName,
    Rule,
    Text,
    Tier,
    fixed_digits,
    register_kind,
)

LATIN_CODE = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# A permit number is 15 digits: the issuing division's six-digit code and nine more. As
# free text, a label beside it read in its place ("Dute of isu") was a value like any.
PERMIT_NO = register_kind(fixed_digits("permit_no", 15))


class WorkPermitClaim(BaseModel):
    """What an application states about a foreigner's work permit."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    permit_no: Text
    holder_name: PersonName
    nationality: LatinText | None = None
    passport_no: LatinText | None = None
    employer: Text | None = None
    valid_until: IsoDate | None = None
    birth_date: IsoDate | None = None


DOCUMENT = DocumentType(
    name="work_permit",
    title="外国人工作许可证",
    tier=Tier.robot,
    system="exit_entry",
    key_field="permit_no",
    claim_model=WorkPermitClaim,
    other_labels=(
        "性别",
        "Sex",
        "发证日期",
        "Date of Issue",
        "发证机关",
        "Issuing Authority",
    ),
    fields=(
        FieldSpec(
            name="permit_no",
            labels=("许可证号", "Permit No."),
            kind=PERMIT_NO,
        ),
        # Latin names: the same words in any order ("SMITH JOHN" is "John Smith").
        FieldSpec(
            name="holder_name",
            labels=("姓名", "Name"),
            kind="name",
            rule=Rule.name,
            max_chars=40,
        ),
        FieldSpec(
            name="nationality",
            labels=("国籍", "Nationality"),
            kind="latin_text",
            ignore_case=True,
            whitelist=LATIN_CODE + " ",
        ),
        FieldSpec(
            name="passport_no",
            labels=("护照号码", "Passport No."),
            kind="latin_text",
            whitelist=LATIN_CODE,
        ),
        FieldSpec(name="employer", labels=("工作单位", "Employer"), kind="text", rule=Rule.text),
        FieldSpec(name="valid_until", labels=("有效期至", "Valid Until"), kind="date"),
        FieldSpec(
            name="birth_date",
            labels=("出生日期", "Date of Birth"),
            kind="date",
            required=False,
        ),
    ),
)
