"""结婚证 (marriage certificate): civil affairs, robot tier (docs/document-types.md).

Loaded by file path from robot.toml (``[types.marriage_certificate] task = ...``).
Each person block prints 姓名 and 身份证件号; the holder's block comes first, so the
holder's fields take the first occurrence of those labels and the spouse's the second.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from stampless import (
    CertNo,
    DocumentType,
    FieldSpec,
    IsoDate,
    PersonName,
    ResidentId,
    Rule,
    Tier,
)

ID_CHARS = "0123456789X"


class MarriageClaim(BaseModel):
    """What an application states about a marriage certificate."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    cert_no: CertNo
    holder_name: PersonName
    holder_id: ResidentId
    registered_on: IsoDate
    spouse_name: PersonName | None = None
    spouse_id: ResidentId | None = None


DOCUMENT = DocumentType(
    name="marriage_certificate",
    title="结婚证",
    tier=Tier.robot,
    system="civil_affairs",
    key_field="cert_no",
    claim_model=MarriageClaim,
    other_labels=("性别", "国籍", "登记机关", "备注"),
    fields=(
        FieldSpec(
            name="cert_no",
            labels=("结婚证字号", "证字号"),
            kind="cert_no",
            whitelist="J0123456789-",
        ),
        FieldSpec(name="registered_on", labels=("登记日期",), kind="date"),
        FieldSpec(
            name="holder_name",
            labels=("持证人", "姓名"),
            kind="name",
            rule=Rule.name,
            max_chars=4,
        ),
        FieldSpec(
            name="holder_id",
            labels=("身份证件号", "身份证号"),
            kind="resident_id",
            whitelist=ID_CHARS,
            birth_field="holder_birth",
        ),
        FieldSpec(
            name="spouse_name",
            labels=("姓名",),
            kind="name",
            rule=Rule.name,
            occurrence=1,
            max_chars=4,
        ),
        FieldSpec(
            name="spouse_id",
            labels=("身份证件号", "身份证号"),
            kind="resident_id",
            whitelist=ID_CHARS,
            occurrence=1,
            birth_field="spouse_birth",
        ),
        # Read to check the IDs (their characters 7-14 are the birth date) and compared
        # with the record, but a page whose birth dates cannot be read is not doubtful.
        FieldSpec(name="holder_birth", labels=("出生日期",), kind="date", required=False),
        FieldSpec(
            name="spouse_birth", labels=("出生日期",), kind="date", required=False, occurrence=1
        ),
    ),
)
