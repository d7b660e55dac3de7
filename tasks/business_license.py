"""营业执照 (business licence): market supervision, robot tier (docs/document-types.md).

Loaded by file path from robot.toml (``[types.business_license] task = ...``).
The registering authority's seal sits over 成立日期, so that field relies on seal
removal in preprocessing.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from stampless import (
    Capital,
    CreditCode,
    DocumentType,
    FieldSpec,
    IsoDate,
    PersonName,
    Rule,
    Text,
    Tier,
)


class LicenceClaim(BaseModel):
    """What an application states about a business licence."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    credit_code: CreditCode
    company_name: Text
    company_type: Text | None = None
    legal_representative: PersonName | None = None
    registered_capital: Capital | None = None
    established_on: IsoDate | None = None
    address: Text | None = None


DOCUMENT = DocumentType(
    name="business_license",
    title="营业执照",
    tier=Tier.robot,
    system="market_supervision",
    key_field="credit_code",
    claim_model=LicenceClaim,
    other_labels=("经营范围", "营业期限", "登记机关", "副本"),
    fields=(
        FieldSpec(
            name="credit_code",
            labels=("统一社会信用代码", "信用代码"),
            kind="credit_code",
            whitelist="0123456789ABCDEFGHJKLMNPQRTUWXY",
        ),
        FieldSpec(name="company_name", labels=("名称",), kind="text", rule=Rule.text),
        FieldSpec(name="company_type", labels=("类型",), kind="text", rule=Rule.text),
        FieldSpec(
            name="legal_representative",
            labels=("法定代表人",),
            kind="name",
            rule=Rule.name,
            max_chars=4,
        ),
        FieldSpec(
            name="registered_capital",
            labels=("注册资本",),
            kind="capital",
            # Capital numerals (壹佰万元整) are easy to misread as look-alikes; the re-read
            # may only choose among the characters an amount can hold.
            whitelist="0123456789.,万元整零壹贰叁肆伍陆柒捌玖拾佰仟亿",
        ),
        FieldSpec(name="established_on", labels=("成立日期",), kind="date"),
        FieldSpec(name="address", labels=("住所",), kind="text", rule=Rule.text),
    ),
)
