"""Hostile input at every intake door: `stampless verify`, `stampless submit`, the inbox, HTTP.

Each input of the corpus (tests/data/hostile/requests.jsonl, over 300 of them) goes
through every door it can reach, and each must be refused the door's way: exit 2 with
one ``stampless:`` line and no traceback, HTTP 4xx, or a move to ``inbox/rejected/``
with a ``.error.txt`` beside it. Nothing may crash or hang (each attempt has a time
limit), nothing may be left behind (spool, evidence, queue, outbox), and a good request
sent right after each hostile one must still go through. Hypothesis adds generated
inputs on top of the corpus.

The corpus is data, generated once by :func:`build_corpus` and kept in the repository so
a failure names a line anyone can read. Regenerate it after changing the generator::

    python tests/test_fuzz_intake.py --write-corpus
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deployment_keys import signing_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
CORPUS = HERE.parent / "data" / "hostile" / "requests.jsonl"
KNOWN_ID = "KNOWN-1"  # an id each door already holds, with content of its own
ATTEMPT_S = 20  # no single attempt may take longer: a hang fails the test, not the run

RESIDENT_ID = "11010519491231002X"
SPOUSE_ID = "110105194912310029"
CLAIM = {
    "cert_no": "J320102-2024-001234",
    "holder_name": "张三",
    "holder_id": RESIDENT_ID,
    "registered_on": "2024-01-02",
}


def good_request(rid: str) -> dict[str, Any]:
    """A valid marriage-certificate request, its scan ``scan.jpg`` beside it."""
    return {"id": rid, "type": "marriage_certificate", "claim": dict(CLAIM), "scan": "scan.jpg"}


# -- the corpus ---------------------------------------------------------------------------------


def _with(**changes: Any) -> dict[str, Any]:
    body = good_request("HOSTILE")
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def _claim(**changes: Any) -> dict[str, Any]:
    claim = dict(CLAIM)
    for key, value in changes.items():
        if value is _DROP:
            claim.pop(key, None)
        else:
            claim[key] = value
    return _with(claim=claim)


_DROP = object()


def build_corpus() -> list[dict[str, Any]]:
    """Every hostile input, as corpus entries (see :class:`Entry`)."""
    out: list[dict[str, Any]] = []

    def raw(name: str, text: str, **extra: Any) -> None:
        out.append({"name": name, "raw": text, **extra})

    def repeated(name: str, *parts: tuple[str, int]) -> None:
        # Long inputs are kept as (text, times) parts, so the corpus stays small to read.
        out.append({"name": name, "raw_parts": [list(p) for p in parts]})

    def raw_bytes(name: str, data: bytes) -> None:
        out.append({"name": name, "raw_b64": base64.b64encode(data).decode()})

    def req(name: str, body: Any, **extra: Any) -> None:
        out.append({"name": name, "request": body, **extra})

    good = json.dumps(good_request("HOSTILE"), ensure_ascii=False)
    # A. not JSON, or not a JSON object
    for name, text in {
        "empty": "",
        "spaces": "   \n\t ",
        "open-brace": "{",
        "close-brace": "}",
        "open-bracket": "[",
        "null": "null",
        "true": "true",
        "number": "1",
        "string": '"a request"',
        "empty-array": "[]",
        "array-of-request": f"[{good}]",
        "empty-object": "{}",
        "two-objects": good + good,
        "trailing-garbage": good + " trailing",
        "trailing-comma": good[:-1] + ",}",
        "single-quotes": good.replace('"', "'"),
        "comment": "// a request\n" + good,
        "nan-priority": good[:-1] + ', "priority": NaN}',
        "infinity-priority": good[:-1] + ', "priority": Infinity}',
        "minus-infinity-priority": good[:-1] + ', "priority": -Infinity}',
        "bom-garbage": "\ufeff{garbage",
        "control-character-in-string": good.replace("张三", "张\u0001三"),
        "unescaped-newline-in-string": good.replace("张三", "张\n三"),
        "lone-surrogate-escape": good.replace("张三", "\\ud800\\udfff\\ud800"),
        "xml": "<request><id>X</id></request>",
        "yaml": "id: X\ntype: marriage_certificate\n",
        "javascript": "({id: 'X'})",
    }.items():
        raw(f"json.{name}", text)
    for cut in (1, 2, 5, 10, 20, 40, 60, 80, 100, 120):
        raw(f"json.truncated-at-{cut}", good[:cut])
    raw_bytes("bytes.latin1", good.replace("张三", "Zhang").encode() + b"\xe9")
    raw_bytes("bytes.invalid-utf8", b'{"id": "\xff\xfe", "type": "x"}')
    raw_bytes("bytes.utf16", good.encode("utf-16"))
    raw_bytes("bytes.utf32", good.encode("utf-32"))
    raw_bytes("bytes.nul", b"\x00" * 64)
    repeated("json.huge-number", ("1", 5000))
    repeated("json.huge-string", ('{"id": "', 1), ("A", 700_000), ('"}', 1))
    raw_bytes("bytes.gzip", b"\x1f\x8b\x08\x00" + b"\x00" * 32)
    raw_bytes("bytes.jpeg", b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    # B. nesting
    for depth in (33, 100, 1000, 50_000):
        repeated(f"nesting.array-{depth}", ("[", depth), ("]", depth))
        repeated(f"nesting.object-{depth}", ('{"a":', depth), ("1", 1), ("}", depth))
    raw(
        "nesting.in-claim",
        good.replace('"claim": {', '"claim": {"deep": ' + "[" * 200 + "]" * 200 + ", "),
    )
    repeated("nesting.unbalanced", ("[", 5000))
    # C. duplicate keys
    raw("duplicate.id", good[:-1] + ', "id": "OTHER-ID"}')
    raw("duplicate.type", good[:-1] + ', "type": "business_license"}')
    raw("duplicate.claim", good[:-1] + ', "claim": {}}')
    raw("duplicate.scan", good[:-1] + ', "scan": "other.jpg"}')
    raw("duplicate.priority", good[:-1] + ', "priority": 1, "priority": 2}')
    raw(
        "duplicate.claim-field",
        good.replace('"holder_name": "张三"', '"holder_name": "张三", "holder_name": "王五"'),
    )
    raw("duplicate.claim-id-field", good.replace('"holder_id"', '"holder_id": "x", "holder_id"'))
    raw("duplicate.case-id", good[:-1] + ', "case_id": "C-1", "case_id": "C-2"}')
    raw("duplicate.same-value", good[:-1] + ', "type": "marriage_certificate"}')
    raw("duplicate.escaped-key", good[:-1] + ', "\\u0069d": "OTHER-ID"}')
    # D. ids
    for name, value in {
        "missing": _DROP,
        "null": None,
        "int": 12,
        "float": 1.5,
        "bool": True,
        "list": ["A"],
        "object": {"id": "A"},
        "empty": "",
        "dotdot": "..",
        "dotdot-path": "../escape",
        "absolute": "/etc/passwd",
        "slash": "a/b",
        "backslash": "a\\b",
        "hidden": ".hidden",
        "leading-dash": "-x",
        "double-dot-inside": "a..b",
        "too-long": "A" * 129,
        "much-too-long": "A" * 10_000,
        "cjk": "证书-1",
        "space": "A B",
        "newline": "A\nB",
        "nul": "A\u0000B",
        "tab": "A\tB",
        "percent": "A%2F..%2Fb",
        "reserved-checkpoint-name": "audit-checkpoint-000000000001",
        "reserved-upper": "AUDIT-CHECKPOINT-1",
        "emoji": "A😀",
        "fullwidth": "ＡＢＣ",
        "trailing-dot-dot": "abc..",
        "url": "http://example.com/x",
    }.items():
        req(f"id.{name}", _with(id=value))
    # E. types
    for name, value in {
        "missing": _DROP,
        "null": None,
        "int": 7,
        "empty": "",
        "unknown": "fishing_licence",
        "path": "../tasks/marriage_certificate",
        "padded": " marriage_certificate",
        "upper": "MARRIAGE_CERTIFICATE",
        "too-long": "t" * 65,
        "list": ["marriage_certificate"],
    }.items():
        req(f"type.{name}", _with(type=value))
    # F. priorities
    for name, value in {
        "2**70": 2**70,
        "-2**70": -(2**70),
        "2**63": 2**63,
        "over-limit": 1_000_001,
        "under-limit": -1_000_001,
        "float": 1.5,
        "float-whole": 1.0,
        "huge-float": 1e308,
        "true": True,
        "false": False,
        "string": "1",
        "null": None,
        "list": [1],
        "object": {"p": 1},
    }.items():
        req(f"priority.{name}", _with(priority=value))
    # G. claims
    for name, value in {
        "missing": _DROP,
        "null": None,
        "list": [CLAIM],
        "string": "张三",
        "int": 1,
        "empty": {},
    }.items():
        req(f"claim.{name}", _with(claim=value))
    req("claim.extra-key", _claim(nickname="小张"))
    req("claim.extra-key-prototype", _claim(__proto__={"admin": True}))
    for required in CLAIM:
        req(f"claim.missing-{required}", _claim(**{required: _DROP}))
    noise = {
        "19-characters": "{v}7",
        "17-characters": "{v3}",
        "prefix-word": "ID {v}",
        "suffix-word": "{v} forged",
        "both-words": "FAKE {v} trailing",
        "separator-dashes": "{a}-{b}",
        "separator-slash": "{a}/{b}",
        "zero-width-space": "{a}\u200b{b}",
        "rtl-override": "\u202e{v}",
        "nul-inside": "{a}\u0000{b}",
        "newline-inside": "{a}\n{b}",
        "doubled": "{v}{v}",
        "html": "<b>{v}</b>",
        "sql": "{v}' OR '1'='1",
        "long": "{v}" + "0" * 500,
    }
    values = {**CLAIM, "spouse_id": SPOUSE_ID, "spouse_name": "李四"}
    for fld, value in values.items():
        half = len(value) // 2
        for name, pattern in noise.items():
            if name == "doubled" and fld.endswith("_name"):
                continue  # 张三张三 is a name of four characters, not noise
            mutated = pattern.format(v=value, v3=value[:-1], a=value[:half], b=value[half:])
            req(f"claim.{fld}.{name}", _claim(**{fld: mutated}))
        for name, bad in {"int": 110105, "list": [value], "bool": True, "null": None}.items():
            if name == "null" and fld.startswith("spouse_"):
                continue  # the spouse's fields may be left out
            req(f"claim.{fld}.{name}", _claim(**{fld: bad}))
    wrong: dict[str, dict[str, str]] = {
        "holder_id": {
            "wrong-check-digit": "110105194912310021",
            "letter-o-for-zero": "11O10519491231002X",
            "lowercase-other-letter": "11010519491231002a",
            "bad-birth-date": "110105194913310024",
            "all-zero": "000000000000000000",
        },
        "cert_no": {
            "no-j": "320102-2024-001234",
            "short-serial": "J320102-2024-00123",
            "long-serial": "J320102-2024-0012345",
            "bad-year": "J320102-1024-001234",
            "underscores": "J320102_2024_001234",
        },
        "holder_name": {
            "one-character": "张",
            "seven-characters": "张三李四王五赵",
            "digits": "张三1",
            "punctuation": "张三.",
            "short-latin": "Al",
        },
        "registered_on": {
            "impossible-day": "2024-02-30",
            "month-13": "2024-13-01",
            "slashes": "2024/01/02",
            "compact": "20240102",
            "unpadded": "2024-1-2",
            "year-only": "2024",
            "future-format-text": "next Tuesday",
            "other-digits": "٢٠٢٤-٠١-٠٢",
        },
    }
    for fld, cases in wrong.items():
        for name, value in cases.items():
            req(f"claim.{fld}.{name}", _claim(**{fld: value}))
    req("claim.spouse_name.digits", _claim(spouse_name="李四4"))
    req("claim.huge-value", _claim(holder_name="张" * 5_000))
    # H. scans (and e-certificates)
    for name, value in {
        "missing": _DROP,
        "null": None,
        "int": 3,
        "list": ["scan.jpg"],
        "empty": "",
        "absolute-outside": "/etc/passwd",
        "absolute-proc": "/proc/self/environ",
        "dev-zero": "/dev/zero",
        "dotdot": "../scan.jpg",
        "dotdot-deep": "../../../../../../etc/passwd",
        "dotdot-evidence": "../var/evidence/OTHER-1/scan.jpg",
        "nonexistent": "nowhere.jpg",
        "folder": ".",
        "nul-in-name": "scan\u0000.jpg",
        "name-300": "s" * 300 + ".jpg",
        "name-5000": "s" * 5000 + ".jpg",
        "path-2000": "a/" * 1000 + "scan.jpg",
        "url": "http://127.0.0.1:9/scan.jpg",
        "file-url": "file:///etc/passwd",
        "home": "~/scan.jpg",
        "glob": "*.jpg",
    }.items():
        req(f"scan.{name}", _with(scan=value))
    for setup in (
        "symlink-outside",
        "symlink-to-evidence",
        "symlink-loop",
        "fifo",
        "folder",
        "text-not-image",
        "empty-file",
        "tiny-image",
        "truncated-jpeg",
        "symlink-dev-zero",
    ):
        req(f"scan.setup.{setup}", _with(), scan_setup=setup)
    req("ecert.nonexistent", _with(ecert="nowhere.ecert"))
    req("ecert.absolute", _with(ecert="/etc/hostname"))
    req("ecert.dotdot", _with(ecert="../x.ecert"))
    req("ecert.int", _with(ecert=5))
    # I. case ids and other keys
    for name, value in {
        "int": 5,
        "path": "../case",
        "empty": "",
        "too-long": "C" * 200,
        "list": ["C-1"],
        "reserved": "audit-checkpoint-7",
    }.items():
        req(f"case_id.{name}", _with(case_id=value))
    for key in ("extra", "__proto__", "Id", "scan_base64", "signature", "verdict"):
        req(f"key.extra-{key}", _with(**{key: "x"}))
    # K. cases
    doc = good_request("CASE-DOC-1")
    for name, body in {
        "documents-not-list": {"case_id": "CASE-X", "documents": {"a": doc}},
        "documents-empty": {"case_id": "CASE-X", "documents": []},
        "document-not-object": {"case_id": "CASE-X", "documents": ["x"]},
        "document-without-id": {"case_id": "CASE-X", "documents": [{**doc, "id": None}]},
        "duplicate-document-ids": {"case_id": "CASE-X", "documents": [doc, doc]},
        "document-id-is-case-id": {"case_id": "CASE-X", "documents": [{**doc, "id": "CASE-X"}]},
        "bad-document": {"case_id": "CASE-X", "documents": [{**doc, "claim": {}}]},
        "one-bad-of-two": {
            "case_id": "CASE-X",
            "documents": [doc, {**doc, "id": "CASE-DOC-2", "priority": 2**70}],
        },
        "case-id-path": {"case_id": "../x", "documents": [doc]},
        "case-id-missing": {"documents": [doc]},
        "priority-bool": {"case_id": "CASE-X", "priority": True, "documents": [doc]},
        "priority-huge": {"case_id": "CASE-X", "priority": 2**70, "documents": [doc]},
        "too-many-documents": {
            "case_id": "CASE-X",
            "documents": [{**doc, "id": f"D-{i}"} for i in range(101)],
        },
        "other-case-id-inside": {"case_id": "CASE-X", "documents": [{**doc, "case_id": "CASE-Y"}]},
        "extra-key": {"case_id": "CASE-X", "documents": [doc], "owner": "x"},
    }.items():
        req(f"case.{name}", body, doors=["submit", "inbox"])
    # L. a known id with other content
    req("conflict.other-holder", {**_claim(holder_name="王五"), "id": KNOWN_ID})
    req("conflict.other-id-number", {**_claim(holder_id=SPOUSE_ID), "id": KNOWN_ID})
    req("conflict.other-type", {**_with(type="business_license"), "id": KNOWN_ID})
    req("conflict.other-case", {**_with(case_id="CASE-Z"), "id": KNOWN_ID})
    req("conflict.other-scan", {**_with(), "id": KNOWN_ID}, scan_setup="other-image")
    # M. the request file itself
    for special in ("fifo", "dev-zero", "sparse-200-mb", "oversized-600-kb", "folder", "symlink"):
        out.append(
            {"name": f"file.{special}", "special": special, "doors": ["verify", "submit", "inbox"]}
        )
    # N. HTTP only: what arrives around the request
    for name, spec in {
        "no-token": {"token": None},
        "wrong-token": {"token": "not-the-token"},
        "basic-auth": {"authorization": "Basic dXNlcjpwYXNz"},
        "no-content-length": {"content_length": None},
        "zero-content-length": {"content_length": "0"},
        "negative-content-length": {"content_length": "-5"},
        "text-content-length": {"content_length": "ten"},
        "huge-content-length": {"content_length": str(10**12)},
        "short-body": {"short_by": 10},
        "chunked": {"chunked": True},
        "wrong-path": {"path": "/requests/../admin"},
        "get-path-traversal": {"method": "GET", "path": "/requests/../../etc/passwd"},
        "invalid-base64": {"body": {"scan_base64": "***not base64***"}},
        "base64-not-string": {"body": {"scan_base64": 12345}},
        "scan-name-long": {"body": {"scan_name": "n" * 5000 + ".jpg"}},
        "scan-name-nul": {"body": {"scan_name": "a\u0000.jpg"}},
        "scan-name-traversal": {"body": {"scan_name": "../../../etc/passwd"}},
        "unknown-body-key": {"body": {"callback": "http://evil"}},
        "request-not-object": {"body": {"request": "x"}},
        "server-path-scan": {"body": {"scan_base64": None, "request_scan": "/etc/passwd"}},
        "case-over-http": {"case": True},
        "empty-scan": {"body": {"scan_base64": ""}},
    }.items():
        out.append({"name": f"http.{name}", "http": spec, "doors": ["http"]})
    return out


@dataclass
class Entry:
    """One corpus line: what to send, and which doors it goes through."""

    name: str
    raw: bytes | None = None  # the request file's bytes, or None for ``request``
    request: Any = None
    scan_setup: str | None = None
    special: str | None = None
    http: dict[str, Any] | None = None
    doors: list[str] = field(default_factory=lambda: ["verify", "submit", "inbox", "http"])

    @classmethod
    def load(cls, line: str) -> Entry:
        data = json.loads(line)
        raw: bytes | None = None
        if "raw" in data:
            raw = data["raw"].encode("utf-8", "surrogatepass")
        elif "raw_b64" in data:
            raw = base64.b64decode(data["raw_b64"])
        elif "raw_parts" in data:
            raw = "".join(text * times for text, times in data["raw_parts"]).encode()
        return cls(
            name=data["name"],
            raw=raw,
            request=data.get("request"),
            scan_setup=data.get("scan_setup"),
            special=data.get("special"),
            http=data.get("http"),
            doors=data.get("doors", ["verify", "submit", "inbox", "http"]),
        )

    def file_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.request, ensure_ascii=False).encode("utf-8", "surrogatepass")


def load_corpus() -> list[Entry]:
    return [Entry.load(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line]


def write_corpus() -> int:
    CORPUS.parent.mkdir(parents=True, exist_ok=True)
    entries = build_corpus()
    lines = [json.dumps(e, ensure_ascii=False, sort_keys=True) for e in entries]
    CORPUS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(entries)


def test_the_corpus_is_the_generators_and_holds_300_inputs() -> None:
    entries = load_corpus()
    assert [json.dumps(e, ensure_ascii=False, sort_keys=True) for e in build_corpus()] == [
        line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line
    ], "tests/data/hostile/requests.jsonl is stale: run tests/test_fuzz_intake.py --write-corpus"
    names = [e.name for e in entries]
    assert len(names) == len(set(names))
    assert len(entries) >= 300


# -- the stage: files beside each request ------------------------------------------------------


def make_image(path: Path, colour: str = "white", size: tuple[int, int] = (64, 48)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def stage(entry: Entry, folder: Path, var: Path, *, file_name: str = "request.json") -> Path:
    """Write ``entry`` into ``folder`` (with its scan and any trick), return the file to send."""
    folder.mkdir(parents=True, exist_ok=True)
    scan = folder / "scan.jpg"
    setup = entry.scan_setup
    outside = folder.parent / f"{folder.name}-outside.jpg"
    if setup in (None, "symlink-outside", "symlink-to-evidence", "other-image"):
        make_image(scan, "black" if setup == "other-image" else "white")
    if setup == "symlink-outside":
        scan.unlink()
        make_image(outside)
        scan.symlink_to(outside)
    elif setup == "symlink-to-evidence":
        sealed = var / "evidence" / "OTHER-1" / "scan.jpg"
        if not sealed.exists():
            make_image(sealed)
        scan.unlink()
        scan.symlink_to(sealed)
    elif setup == "symlink-loop":
        scan.symlink_to(folder / "scan.jpg")
    elif setup == "symlink-dev-zero":
        scan.symlink_to("/dev/zero")
    elif setup == "fifo":
        os.mkfifo(scan)
    elif setup == "folder":
        scan.mkdir()
    elif setup == "text-not-image":
        scan.write_text("I am text, not a JPEG")
    elif setup == "empty-file":
        scan.write_bytes(b"")
    elif setup == "tiny-image":
        make_image(scan, size=(8, 8))
    elif setup == "truncated-jpeg":
        make_image(outside)
        scan.write_bytes(outside.read_bytes()[:200])
    path = folder / file_name
    special = entry.special
    if special == "fifo":
        os.mkfifo(path)
    elif special == "dev-zero":
        path.symlink_to("/dev/zero")
    elif special == "sparse-200-mb":
        with path.open("wb") as fh:
            fh.truncate(200 * 1024 * 1024)
    elif special == "oversized-600-kb":
        body = good_request("OVERSIZED")
        body["claim"]["padding"] = "x" * 600 * 1024
        path.write_text(json.dumps(body))
    elif special == "folder":
        path.mkdir()
    elif special == "symlink":
        target = folder.parent / f"{folder.name}-target.json"
        target.write_text(json.dumps(good_request("VIA-LINK")))
        path.symlink_to(target)
    else:
        path.write_bytes(entry.file_bytes())
    return path


# -- the doors ------------------------------------------------------------------------------------


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The repository's robot.toml with a var/ of its own, its secrets, a signing key and
    an issuer."""
    from stampless.demo import DEMO_ISSUER, make_ecerts
    from stampless.fixtures.accounts import fixture_env

    var = tmp_path / "var"
    items, issuer_key = make_ecerts(tmp_path / "ecerts", tmp_path / "issuer-keys")
    env = {
        **fixture_env(),  # verify checks every secret robot.toml names before it starts
        **signing_env(),
        "STAMPLESS__PROJECT__VAR_DIR": str(var),
        f"STAMPLESS__ISSUERS__{DEMO_ISSUER.upper()}__PUBLIC_KEY": issuer_key,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ecert_request = next(i.request_path for i in items if i.expected == "verified")
    return {"var": var, "tmp": tmp_path, "ecert_request": ecert_request}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``stampless ARGS`` in this process (a process per call would take 300 seconds)."""
    from stampless.cli import main
    from stampless.cli._common import state

    state._config = None  # loaded once per process normally; each call here is a "process"
    capsys.readouterr()
    try:
        with time_limit(ATTEMPT_S):
            main(["--config", str(REPO / "robot.toml"), *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def refused_by_cli(code: int, out: str, err: str) -> str | None:
    """Why a CLI answer is not a proper refusal, or None when it is one."""
    if code != 2:
        return f"exit {code}: {(out + err)[-300:]!r}"
    if "Traceback" in err:
        return "a traceback"
    lines = [line for line in err.splitlines() if line.startswith("stampless:")]
    if len(lines) != 1:
        return f"{len(lines)} error lines: {err[-300:]!r}"
    return None


def through_cli(
    capsys: pytest.CaptureFixture[str], command: str, tmp: Path, var: Path
) -> Iterator[tuple[int, Entry, str | None]]:
    """Each corpus entry for ``stampless COMMAND``, sent, with why it was not refused
    properly (None: it was)."""
    for n, entry in enumerate(e for e in load_corpus() if command in e.doors):
        path = stage(entry, tmp / command / f"{n:04d}", var)
        try:
            why = refused_by_cli(*cli(capsys, command, str(path)))
        except Hang as exc:
            why = str(exc)
        yield n, entry, why


def leftovers(var: Path, allowed: set[str]) -> list[str]:
    """What a refused request left behind in var/ (names outside ``allowed``)."""
    found: list[str] = []
    spool = var / "spool"
    if spool.exists():
        found += [f"spool/{p.name}" for p in spool.iterdir() if p.name not in allowed]
    evidence = var / "evidence"
    if evidence.exists():
        found += [
            f"evidence/{p.name}"
            for p in evidence.iterdir()
            if p.name not in allowed and p.name != "OTHER-1"
        ]
    outbox = var / "outbox"
    if outbox.exists():
        found += [f"outbox/{p.name}" for p in outbox.glob("*.json") if p.stem not in allowed]
    return found


def queued_ids(var: Path) -> set[str]:
    from stampless.queue.sqlite import SqliteQueue

    if not (var / "queue.db").exists():
        return set()
    queue = SqliteQueue(var / "queue.db", {})
    try:
        return {item.request_id for item in queue.list(limit=100_000)}
    finally:
        queue.close()


@pytest.mark.slow
def test_door_cli_submit(deployment: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from stampless.config import load_config
    from stampless.intake import Intake
    from stampless.queue import open_queue

    var, tmp = deployment["var"], deployment["tmp"]
    known = stage(Entry("known", request=good_request(KNOWN_ID)), tmp / "known", var)
    assert cli(capsys, "submit", str(known))[0] == 0
    # The good request after each hostile one goes through the same intake, without the
    # command line's start-up (which would double this test's minutes).
    config = load_config(REPO / "robot.toml")
    queue = open_queue(config)
    intake = Intake(config, queue)
    failures: list[str] = []
    goods = {KNOWN_ID}
    tried = 0
    for n, entry, why in through_cli(capsys, "submit", tmp, var):
        tried += 1
        if why is not None:
            failures.append(f"{entry.name}: {why}")
        good = tmp / "submit" / f"{n:04d}-good"
        rid = f"GOOD-{n:04d}"
        [outcome] = intake.submit_files([stage(Entry(rid, request=good_request(rid)), good, var)])
        if not outcome.added:
            failures.append(f"{entry.name}: the good request behind it was not queued")
        goods.add(rid)
    queue.close()
    failures += [f"left behind: {name}" for name in leftovers(var, goods)]
    failures += [f"queued: {rid}" for rid in queued_ids(var) - goods]
    assert tried >= 300 and not failures, "\n".join(failures)


@pytest.mark.slow
def test_door_cli_verify(deployment: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from stampless.config import load_config
    from stampless.verify import verify_file

    var, tmp = deployment["var"], deployment["tmp"]
    # The good request: an electronic licence (the instant tier: no browser), verified
    # for real once under KNOWN_ID; after each hostile input it is sent again and must
    # get its stored verdict.
    known = json.loads(deployment["ecert_request"].read_text(encoding="utf-8"))
    known["id"] = KNOWN_ID
    good = deployment["ecert_request"].parent / "known.request.json"
    good.write_text(json.dumps(known, ensure_ascii=False), encoding="utf-8")
    code, out, err = cli(capsys, "verify", str(good), "--json")
    assert code == 0, err
    assert json.loads(out)["verdict"] == "verified"
    failures: list[str] = []
    tried = 0
    for _, entry, why in through_cli(capsys, "verify", tmp, var):
        tried += 1
        if why is not None:
            failures.append(f"{entry.name}: {why}")
        # The good request again, through the same function `verify` runs.
        again = asyncio.run(verify_file(load_config(REPO / "robot.toml"), good))
        if again.verdict.verdict.value != "verified":
            failures.append(f"{entry.name}: the good request behind it was not answered")
    failures += [f"left behind: {name}" for name in leftovers(var, {KNOWN_ID})]
    assert tried >= 300 and not failures, "\n".join(failures)


def test_door_inbox(deployment: dict[str, Any]) -> None:
    from stampless.config import load_config
    from stampless.intake import ERROR_SUFFIX, Intake, poll_inbox
    from stampless.queue import open_queue

    var = deployment["var"]
    config = load_config(REPO / "robot.toml")
    queue = open_queue(config)
    intake = Intake(config, queue)
    inbox = config.inbox_dir
    known = stage(
        Entry("known", request=good_request(KNOWN_ID)), inbox, var, file_name="0000-known.json"
    )
    assert poll_inbox(intake, inbox, min_age_s=0).done == [known.name]
    entries = [e for e in load_corpus() if "inbox" in e.doors]
    hostile: dict[str, str] = {}
    goods = {KNOWN_ID}
    for n, entry in enumerate(entries):
        # Each hostile file, then a good one sorted right behind it, in one inbox.
        name = f"{n:04d}-a-hostile.json"
        if entry.scan_setup is not None:
            # A trick on the inbox's own scan.jpg would reach the files around it: the
            # files so far go first, then this one alone, then the scan is made good again.
            _poll_one_round(intake, inbox)
            _reset_scan(inbox)
            stage(entry, inbox, var, file_name=name)
            _poll_one_round(intake, inbox)
            _reset_scan(inbox)
        else:
            stage(entry, inbox, var, file_name=name)
        hostile[name] = entry.name
        rid = f"GOOD-{n:04d}"
        stage(Entry(rid, request=good_request(rid)), inbox, var, file_name=f"{n:04d}-b-good.json")
        goods.add(rid)
    with time_limit(600):
        poll_inbox(intake, inbox, min_age_s=0)
    failures: list[str] = []
    rejected = inbox / "rejected"
    for name, what in hostile.items():
        if not (rejected / name).exists() and not (rejected / name).is_symlink():
            failures.append(f"{what}: not in rejected/")
        elif not (rejected / f"{name}{ERROR_SUFFIX}").read_text().strip():
            failures.append(f"{what}: no reason in {name}{ERROR_SUFFIX}")
    flowed = {p.name for p in (inbox / "done").iterdir()}
    failures += [
        f"{entry.name}: the good file behind it did not flow"
        for n, entry in enumerate(entries)
        if f"{n:04d}-b-good.json" not in flowed
    ]
    failures += [f"left in the inbox: {p.name}" for p in inbox.glob("*.json")]
    failures += [f"left behind: {name}" for name in leftovers(var, goods)]
    failures += [f"queued: {rid}" for rid in queued_ids(var) - goods]
    queue.close()
    assert len(entries) >= 300 and not failures, "\n".join(failures)


def _poll_one_round(intake: Any, inbox: Path) -> None:
    from stampless.intake import poll_inbox

    with time_limit(ATTEMPT_S * 3):
        poll_inbox(intake, inbox, min_age_s=0)


def _reset_scan(inbox: Path) -> None:
    scan = inbox / "scan.jpg"
    if scan.is_dir() and not scan.is_symlink():
        shutil.rmtree(scan)
    elif scan.exists() or scan.is_symlink():
        scan.unlink()
    for extra in inbox.parent.glob(f"{inbox.name}-*"):
        if extra.is_file():
            extra.unlink()


class Http:
    """The daemon's HTTP intake on a free port of 127.0.0.1, talked to over raw sockets."""

    TOKEN = "fuzz-token"

    def __init__(self, intake: Any) -> None:
        from stampless.intake import IntakeServer

        intake.config.intake.read_timeout_s = 1.0
        self.server = IntakeServer(intake, self.TOKEN).start()
        host, port = self.server.httpd.server_address[:2]
        self.address = (str(host), int(port))

    def send(
        self,
        body: bytes,
        *,
        method: str = "POST",
        path: str = "/requests",
        token: str | None = TOKEN,
        authorization: str | None = None,
        content_length: str | None = "auto",
        short_by: int = 0,
        chunked: bool = False,
    ) -> int:
        """Send one request as bytes on the wire; the answer's status code."""
        import socket

        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        if authorization is not None:
            head.append(f"Authorization: {authorization}")
        elif token is not None:
            head.append(f"Authorization: Bearer {token}")
        head.append("Content-Type: application/json")
        payload = body
        if chunked:
            head.append("Transfer-Encoding: chunked")
            payload = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        elif content_length == "auto":
            head.append(f"Content-Length: {len(body)}")
        elif content_length is not None:
            head.append(f"Content-Length: {content_length}")
        if short_by:
            payload = payload[:-short_by]
        with socket.create_connection(self.address, timeout=ATTEMPT_S) as conn:
            conn.sendall(
                ("\r\n".join(head) + "\r\n\r\n").encode() + (b"" if method == "GET" else payload)
            )
            answer = b""
            while b"\r\n" not in answer:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                answer += chunk
        status = answer.split(b"\r\n", 1)[0].split()
        return int(status[1]) if len(status) > 1 else 0

    def stop(self) -> None:
        self.server.stop()


def http_scan(entry: Entry, scan: bytes, folder: Path) -> bytes | None:
    """The scan bytes an entry sends inline over HTTP; None: it names a server path.

    A trick on the file (a link, a FIFO, a folder) has no HTTP form; it is sent as a path
    on the server, which is what such a request would try. A bad file's bytes go inline.
    """
    setup = entry.scan_setup
    if setup is None:
        return scan
    if setup in ("text-not-image", "empty-file", "tiny-image", "truncated-jpeg", "other-image"):
        stage(Entry(entry.name, request=good_request("X"), scan_setup=setup), folder, folder)
        return (folder / "scan.jpg").read_bytes()
    return None


def http_body(entry: Entry, scan: bytes | None) -> bytes:
    """The HTTP form of a corpus entry: its request with the scan inlined (or as is)."""
    request = entry.request
    if request is None:
        return entry.file_bytes()  # not JSON, or not an object: sent as the body itself
    if not isinstance(request, dict) or "documents" in request:
        return json.dumps(request, ensure_ascii=False).encode("utf-8", "surrogatepass")
    request = dict(request)
    body: dict[str, Any] = {"request": request}
    if request.get("scan") == "scan.jpg" and scan is not None:
        # The usual scan goes inline; a scan named otherwise is sent as a server path.
        del request["scan"]
        body["scan_base64"] = base64.b64encode(scan).decode()
        body["scan_name"] = "scan.jpg"
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


def test_door_http(deployment: dict[str, Any]) -> None:
    from stampless.config import load_config
    from stampless.intake import Intake
    from stampless.queue import open_queue

    var, tmp = deployment["var"], deployment["tmp"]
    config = load_config(REPO / "robot.toml")
    queue = open_queue(config)
    intake = Intake(config, queue)
    make_image(tmp / "scan.jpg")
    scan = (tmp / "scan.jpg").read_bytes()
    http = Http(intake)

    def good(rid: str) -> int:
        return http.send(http_body(Entry(rid, request=good_request(rid)), scan))

    failures: list[str] = []
    goods = {KNOWN_ID}
    tried = 0
    try:
        assert good(KNOWN_ID) == 201
        for n, entry in enumerate(e for e in load_corpus() if "http" in e.doors):
            if entry.special is not None:
                continue
            tried += 1
            options: dict[str, Any] = {}
            body = http_body(entry, http_scan(entry, scan, tmp / "http" / f"{n:04d}"))
            if entry.http is not None:
                spec = dict(entry.http)
                request = {
                    "request": {k: v for k, v in good_request(f"H-{n}").items() if k != "scan"},
                    "scan_base64": base64.b64encode(scan).decode(),
                    "scan_name": "scan.jpg",
                }
                for key, value in spec.pop("body", {}).items():
                    if key == "request_scan":
                        request["request"]["scan"] = value
                    elif value is None:
                        request.pop(key, None)
                    else:
                        request[key] = value
                if spec.pop("case", False):
                    request = {"case_id": f"CASE-{n}", "documents": [good_request(f"H-{n}")]}
                body = json.dumps(request, ensure_ascii=False).encode("utf-8", "surrogatepass")
                options = spec
            try:
                with time_limit(ATTEMPT_S):
                    status = http.send(body, **options)
            except (Hang, OSError) as exc:
                failures.append(f"{entry.name}: {exc}")
                continue
            if not 400 <= status < 500:
                failures.append(f"{entry.name}: HTTP {status}")
            rid = f"GOOD-{n:04d}"
            if good(rid) != 201:
                failures.append(f"{entry.name}: the good request behind it was not queued")
            goods.add(rid)
    finally:
        http.stop()
    failures += [f"left behind: {name}" for name in leftovers(var, goods)]
    spool = var / "spool"
    failures += [f"left behind: spool/{p.name}" for p in spool.glob(".incoming-*")]
    failures += [f"queued: {rid}" for rid in queued_ids(var) - goods]
    queue.close()
    assert tried >= 300 and not failures, "\n".join(failures)


# -- hypothesis: generated inputs on top of the corpus -------------------------------------------

_NEVER_IN_A_CLAIM = st.text(
    alphabet=st.characters(blacklist_categories=("Zs", "Cc"), blacklist_characters="\u3000"),
    min_size=1,
    max_size=8,
).filter(lambda s: not s.isspace())


@st.composite
def noisy_claims(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request whose identifier or date claim gets extra characters around it."""
    field_name = draw(st.sampled_from(["holder_id", "cert_no", "registered_on"]))
    extra = draw(_NEVER_IN_A_CLAIM)
    where = draw(st.sampled_from(["before", "after"]))
    value = CLAIM[field_name]
    mutated = extra + value if where == "before" else value + extra
    body = good_request("GEN-1")
    body["claim"] = {**CLAIM, field_name: mutated}
    return body


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def fuzz_intake(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An Intake on the repository's robot.toml, for the generated inputs."""
    from stampless.config import load_config
    from stampless.intake import Intake
    from stampless.queue import open_queue

    var = tmp_path_factory.mktemp("fuzz-var")
    config = load_config(REPO / "robot.toml", environ={"STAMPLESS__PROJECT__VAR_DIR": str(var)})
    queue = open_queue(config)
    folder = tmp_path_factory.mktemp("fuzz-in")
    make_image(folder / "scan.jpg")
    yield Intake(config, queue), folder
    queue.close()


def _refused(intake: Any, folder: Path, data: bytes) -> None:
    from stampless.errors import InputError

    path = folder / "request.json"
    path.write_bytes(data)
    with pytest.raises(InputError), time_limit(ATTEMPT_S):
        intake.submit_files([path])
    assert intake.queue.list() == []
    spool = intake.spool_dir
    assert not spool.exists() or not any(spool.iterdir())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(noisy_claims())
def test_generated_claims_with_anything_more_are_refused(
    fuzz_intake: Any, body: dict[str, Any]
) -> None:
    intake, folder = fuzz_intake
    _refused(intake, folder, json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        _JSON,
        st.dictionaries(
            st.sampled_from(["id", "type", "claim", "scan", "priority", "case_id", "x"]), _JSON
        ),
    )
)
def test_generated_json_that_is_no_request_is_refused(fuzz_intake: Any, value: Any) -> None:
    intake, folder = fuzz_intake
    # A generated object could by chance be a complete request; those are not hostile.
    if isinstance(value, dict) and {"id", "type", "claim"} <= set(value):
        value = {**value, "claim": {"holder_id": "1"}}
    _refused(intake, folder, json.dumps(value).encode())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=2000))
def test_generated_bytes_are_refused(fuzz_intake: Any, data: bytes) -> None:
    intake, folder = fuzz_intake
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if isinstance(value, dict) and {"id", "type", "claim"} <= set(value):
        return  # a request by chance; the other strategies cover what follows
    _refused(intake, folder, data)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-corpus"]:
        print(f"{write_corpus()} entries written to {CORPUS}")
    else:
        sys.exit("usage: python tests/test_fuzz_intake.py --write-corpus")
