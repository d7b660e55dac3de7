"""Cases: fan-out to one item per document, one case verdict once all are final."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_outbox import Receiver
from test_worker import FileRouter, LookupServer, make_config, make_pool, run_pool

from stampless.cases import read_case_verdict
from stampless.delivery import Delivery
from stampless.errors import InputError, RequestConflict
from stampless.intake import Intake
from stampless.queue import ItemState, open_queue


@pytest.fixture
def server(tmp_path: Path) -> Any:
    s = LookupServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()


SCAN = b"not really a jpeg, the test router only checks it exists"


def write_case(folder: Path, case_id: str, docs: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scan.jpg").write_bytes(SCAN)
    path = folder / f"{case_id}.json"
    path.write_text(
        json.dumps({"case_id": case_id, "title": "Open a restaurant", "documents": docs}),
        encoding="utf-8",
    )
    return path


def doc(rid: str, system: str, expect: str = "verified") -> dict[str, Any]:
    return {
        "id": rid,
        "type": "business_license",
        "claim": {"system": system, "expect": expect},
        "scan": "scan.jpg",
    }


def test_case_with_one_failing_document_fails(tmp_path: Path, server: Any) -> None:
    config = make_config(tmp_path / "var")
    queue = open_queue(config)
    intake = Intake(config, queue, router=FileRouter())
    bad = write_case(
        tmp_path / "in",
        "CASE-1",
        [
            doc("C1-licence", "market_supervision"),
            doc("C1-marriage", "civil_affairs", expect="mismatch"),
            doc("C1-other", "civil_affairs"),
        ],
    )
    good = write_case(
        tmp_path / "in",
        "CASE-2",
        [doc("C2-a", "market_supervision"), doc("C2-b", "civil_affairs")],
    )
    outcomes = intake.submit_files([bad, good])
    assert [o.id for o in outcomes] == [
        "C1-licence",
        "C1-marriage",
        "C1-other",
        "CASE-1",
        "C2-a",
        "C2-b",
        "CASE-2",
    ]
    assert all(o.added for o in outcomes)
    assert {i.case_id for i in queue.list()} == {"CASE-1", "CASE-2"}
    # The spool holds its own copy: the original scan may go away.
    (tmp_path / "in" / "scan.jpg").unlink()
    receiver = Receiver(tmp_path, fail_first=0)
    try:
        pool = make_pool(config, queue, server.url, workers=2, until_empty=True)
        pool.delivery = Delivery(
            config.var_dir / "delivery.db", config.outbox_dir, url=receiver.url, backoff_base_s=0
        )
        run_pool(pool)
        pool.delivery.deliver_pending()  # what the completions' passes had not seen yet
        accepted = receiver.state()["accepted"]
    finally:
        receiver.stop()
    # Every verdict, the case verdicts included, reached the webhook under its own key.
    assert sorted(accepted) == sorted(p.stem for p in config.outbox_dir.glob("*.json"))
    assert {"CASE-1", "CASE-2"} <= set(accepted)
    assert queue.counts()[ItemState.done] == 5
    failing = read_case_verdict(config.outbox_dir, "CASE-1")
    assert failing is not None and failing.verdict == "not_verified"
    assert [d.request_id for d in failing.documents] == ["C1-licence", "C1-marriage", "C1-other"]
    assert failing.reasons == ["C1-marriage (business_license): mismatch"]
    assert all((config.outbox_dir / d.outbox).is_file() for d in failing.documents)
    passing = read_case_verdict(config.outbox_dir, "CASE-2")
    assert passing is not None and passing.verdict == "verified"
    # Submitting the same case again changes nothing and says so; the content is
    # compared, so the scan must be the one first sent.
    (tmp_path / "in" / "scan.jpg").write_bytes(SCAN)
    again = intake.submit_files([good])
    assert [o.added for o in again] == [False, False, False]
    assert "nothing changed" in again[-1].message
    assert len(queue.list()) == 5
    (tmp_path / "in" / "scan.jpg").write_bytes(b"another scan")
    with pytest.raises(RequestConflict, match="C2-a is already known"):
        intake.submit_files([good])


def test_bad_case_enqueues_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path / "var")
    queue = open_queue(config)
    intake = Intake(config, queue, router=FileRouter())
    ok = write_case(tmp_path / "in", "CASE-OK", [doc("OK-1", "civil_affairs")])
    dup = write_case(
        tmp_path / "in", "CASE-DUP", [doc("D-1", "civil_affairs"), doc("D-1", "civil_affairs")]
    )
    with pytest.raises(InputError, match="used twice"):
        intake.submit_files([ok, dup])
    missing = write_case(tmp_path / "in2", "CASE-M", [doc("M-1", "civil_affairs")])
    (tmp_path / "in2" / "scan.jpg").unlink()
    with pytest.raises(InputError, match="does not exist"):
        intake.submit_files([ok, missing])
    assert queue.list() == []
    spool = config.var_dir / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []
    assert not (config.var_dir / "cases").exists()
