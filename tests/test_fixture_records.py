"""The seeded records and fixture accounts: valid, canonical, deterministic, fast."""

from __future__ import annotations

import re
import time
from datetime import date, timedelta

import pyotp
import pytest

from stampless.checksums import is_valid_credit_code, is_valid_resident_id
from stampless.fixtures import records as rec
from stampless.fixtures.accounts import ACCOUNTS, accounts, fixture_env

CJK_NAME = re.compile(r"^[\u4e00-\u9fff]{2,4}$")
CJK_TEXT = re.compile(r"^[\u4e00-\u9fff0-9()（）、号]+$")
CERT_NO = re.compile(r"^J\d{6}-(\d{4})-\d{6}$")
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
DIVISION_CODES = {code for code, _, _ in rec.DIVISIONS}


def _check_person(person_id: str, birth: str, sex: str) -> None:
    assert is_valid_resident_id(person_id), person_id
    assert person_id[6:14] == birth.replace("-", "")
    assert int(person_id[16]) % 2 == (1 if sex == "男" else 0)


@pytest.mark.parametrize("doc_type", list(rec.DOC_TYPES))
def test_at_least_5000_unique_records_with_valid_status(doc_type: str) -> None:
    rows = rec.records(doc_type)
    key = rec.KEY_FIELD[doc_type]
    assert len(rows) >= rec.RECORD_LIMIT.get(doc_type, 5000)
    assert len({r[key] for r in rows}) == len(rows)
    statuses = [r["status"] for r in rows]
    assert set(statuses) == {"valid", "revoked"}
    assert 0.01 < statuses.count("revoked") / len(rows) < 0.06


def test_marriage_certificates_are_canonical_and_consistent() -> None:
    for r in rec.records("marriage_certificate"):
        m = CERT_NO.match(r["cert_no"])
        assert m, r["cert_no"]
        registered = date.fromisoformat(r["registered_on"])
        assert int(m.group(1)) == registered.year
        assert CJK_NAME.match(r["holder_name"]) and CJK_NAME.match(r["spouse_name"])
        assert {r["holder_sex"], r["spouse_sex"]} == {"男", "女"}
        _check_person(r["holder_id"], r["holder_birth"], r["holder_sex"])
        _check_person(r["spouse_id"], r["spouse_birth"], r["spouse_sex"])
        assert date.fromisoformat(r["holder_birth"]) < registered
        assert r["nationality"] == "中国"


def test_business_licences_are_canonical() -> None:
    for r in rec.records("business_license"):
        assert is_valid_credit_code(r["credit_code"]), r["credit_code"]
        assert CJK_TEXT.match(r["company_name"]) and len(r["company_name"]) <= 40
        assert r["company_type"] and CJK_NAME.match(r["legal_representative"])
        assert r["registered_capital"].isdigit() and int(r["registered_capital"]) > 0
        date.fromisoformat(r["established_on"])
        assert CJK_TEXT.match(r["address"]) and r["address"].endswith("号")


def test_social_security_records_are_canonical() -> None:
    for r in rec.records("social_security_record"):
        _check_person(r["person_id"], r["person_birth"], r["person_sex"])
        assert CJK_NAME.match(r["person_name"])
        assert MONTH.match(r["period_from"]) and MONTH.match(r["period_to"])
        assert r["period_from"] <= r["period_to"]
        fy, fm = map(int, r["period_from"].split("-"))
        ty, tm = map(int, r["period_to"].split("-"))
        span = (ty * 12 + tm) - (fy * 12 + fm) + 1
        assert r["months_paid"].isdigit() and 1 <= int(r["months_paid"]) <= span


def test_work_permits_are_latin_canonical_and_few() -> None:
    rows = rec.records("work_permit", count=5000)
    assert len(rows) == rec.RECORD_LIMIT["work_permit"] == 210
    assert rec.records("work_permit", count=20) == rows[:20]
    assert 180 <= sum(r["status"] == "valid" for r in rows) < 210
    nationalities = {n for n, _ in rec.NATIONALITIES}
    for r in rows:
        assert re.fullmatch(r"\d{15}", r["permit_no"]) and r["permit_no"][:6] in DIVISION_CODES
        assert re.fullmatch(r"[A-Z][A-Z'-]+( [A-Z][A-Z'-]+){1,2}", r["holder_name"])
        assert r["nationality"] in nationalities
        passport = r["passport_no"]
        assert re.fullmatch(r"[0-9A-Z]{8,9}", passport)
        assert any(c.isalpha() for c in passport) and any(c.isdigit() for c in passport)
        assert CJK_TEXT.match(r["employer"]) and r["holder_sex"] in ("男", "女")
        issued, until = date.fromisoformat(r["issued_on"]), date.fromisoformat(r["valid_until"])
        assert issued < until <= issued.replace(day=1, year=issued.year + 3) + timedelta(days=31)
        assert date.fromisoformat(r["birth_date"]) < issued


def test_records_are_deterministic_per_seed_and_prefix_stable() -> None:
    a = rec.records("business_license", seed=123, count=300)
    b = rec.records("business_license", seed=123, count=300)
    c = rec.records("business_license", seed=124, count=300)
    assert a == b
    assert a != c
    assert rec.records("business_license", seed=123, count=50) == a[:50]
    # Copies: a caller editing its list must not change what the servers hold.
    a[0]["company_name"] = "改"
    assert rec.records("business_license", seed=123, count=1)[0]["company_name"] != "改"


def test_generation_is_fast() -> None:
    started = time.perf_counter()
    for doc_type in rec.DOC_TYPES:
        rec.records(doc_type, seed=98765)
    # About 0.3 s on an idle core; the bound only catches a runaway (CI shares its cores).
    assert time.perf_counter() - started < 30.0


@pytest.mark.parametrize("doc_type", list(rec.DOC_TYPES))
def test_record_by_key_and_absent_key(doc_type: str) -> None:
    key_field = rec.KEY_FIELD[doc_type]
    some = rec.records(doc_type)[123]
    assert rec.record_by_key(doc_type, some[key_field]) == some
    absent = [rec.absent_key(doc_type, 7, i) for i in range(100)]
    assert len(set(absent)) == 100
    assert absent == [rec.absent_key(doc_type, 7, i) for i in range(100)]
    for key in absent:
        assert rec.record_by_key(doc_type, key) is None
        if doc_type == "marriage_certificate":
            assert CERT_NO.match(key)
        elif doc_type == "business_license":
            assert is_valid_credit_code(key)
        elif doc_type == "work_permit":
            assert re.fullmatch(r"\d{15}", key) and key[:6] in DIVISION_CODES
        else:
            assert is_valid_resident_id(key)


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown document type"):
        rec.records("passport")
    with pytest.raises(ValueError, match="unknown document type"):
        rec.record_by_key("passport", "x")


def test_fixture_accounts_and_env() -> None:
    env = fixture_env()
    for system in rec.SYSTEMS:
        assert len(accounts(system)) >= 3
    assert env["CIVIL01_PASSWORD"] == accounts("civil_affairs")[0].password
    assert {"MARKET03_PASSWORD", "SOCIAL02_PASSWORD", "SOCIAL03_TOTP"} <= set(env)
    totp_vars = [k for k in env if k.endswith("_TOTP")]
    assert sorted(totp_vars) == ["SOCIAL01_TOTP", "SOCIAL02_TOTP", "SOCIAL03_TOTP"]
    for name in totp_vars:
        assert pyotp.TOTP(env[name]).now().isdigit()
    every = [a for group in ACCOUNTS.values() for a in group]
    assert all(a.password not in repr(a) for a in every)
