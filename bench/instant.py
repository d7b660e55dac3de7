"""Benchmark of the instant tier: e-certificate verification, as JSON and as QR on a scan.

    .venv/bin/python bench/instant.py [--count 1000] [--scans 24] [--difficulty normal]

JSON: ``count`` distinct signed e-certificate files, each verified through
``verify_instant`` (read file, parse, Ed25519 verify, revocation list, field compare).
QR-on-scan: ``scans`` distinct rendered and degraded scans carrying the e-cert QR code
(rendering is slow, so they are cycled to reach ``count`` verifications); each one is
decoded with zxing-cpp and verified. Prints per-item p50/p95/max in milliseconds.
Targets: JSON <= 5 ms, QR-on-scan <= 100 ms (p95).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stampless.config import Config, IssuerConfig
from stampless.ecert import issue_ecert, public_key_b64, verify_instant, write_revocation_list
from stampless.fixtures.ecerts import claim_of, ecert_fields, ecert_scan
from stampless.fixtures.records import DOC_TYPES, records
from stampless.models import Request


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, seconds: list[float], verdicts: Counter[str]) -> None:
    ms = [s * 1000 for s in seconds]
    print(
        f"{name:<12} n={len(ms):<5} p50={pct(ms, 0.5):7.2f} ms  p95={pct(ms, 0.95):7.2f} ms  "
        f"max={max(ms):7.2f} ms  mean={statistics.fmean(ms):7.2f} ms  verdicts={dict(verdicts)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--scans", type=int, default=24)
    parser.add_argument("--difficulty", default="normal", choices=("easy", "normal", "hard"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stampless-bench-instant-"))
    keys = {system: Ed25519PrivateKey.generate() for system in set(DOC_TYPES.values())}
    issuers = {}
    for system, key in keys.items():
        rl = work / f"{system}.revoked.json"
        write_revocation_list(rl, system, [f"REVOKED-{i}" for i in range(500)])
        issuers[system] = IssuerConfig(public_key=public_key_b64(key), revocation_list=rl)
    config = Config(issuers=issuers, root=work)
    types = sorted(DOC_TYPES)
    pools = {t: [r for r in records(t) if r.get("status") == "valid"] for t in types}

    # -- JSON files -------------------------------------------------------------------------
    requests: list[Request] = []
    for i in range(args.count):
        doc_type = types[i % len(types)]
        record = pools[doc_type][i // len(types)]
        system = DOC_TYPES[doc_type]
        env = issue_ecert(keys[system], system, doc_type, ecert_fields(record), serial=f"B-{i}")
        path = work / f"{i}.ecert.json"
        path.write_text(json.dumps(env, ensure_ascii=False), encoding="utf-8")
        requests.append(
            Request(id=f"B-{i}", type=doc_type, claim=claim_of(doc_type, record), ecert=path.name)
        )
    seconds, verdicts = [], Counter[str]()
    for request in requests:
        t0 = time.perf_counter()
        decision = verify_instant(request, base_dir=work, config=config)
        seconds.append(time.perf_counter() - t0)
        verdicts[decision.verdict.value] += 1
    report("JSON", seconds, verdicts)

    # -- QR on scans -------------------------------------------------------------------------
    t_render = time.perf_counter()
    scan_requests: list[Request] = []
    for i in range(args.scans):
        doc_type = types[i % len(types)]
        record = pools[doc_type][i]
        system = DOC_TYPES[doc_type]
        env = issue_ecert(keys[system], system, doc_type, ecert_fields(record), serial=f"Q-{i}")
        image = ecert_scan(doc_type, record, env, seed=i, difficulty=args.difficulty)
        path = work / f"scan-{i}.jpg"
        image.save(path, quality=85)
        scan_requests.append(
            Request(id=f"Q-{i}", type=doc_type, claim=claim_of(doc_type, record), scan=path.name)
        )
    print(
        f"(rendered {args.scans} {args.difficulty} scans in {time.perf_counter() - t_render:.1f} s;"
        f" cycled to {args.count} verifications)",
        file=sys.stderr,
    )
    seconds, verdicts = [], Counter[str]()
    for i in range(args.count):
        request = scan_requests[i % len(scan_requests)]
        t0 = time.perf_counter()
        decision = verify_instant(request, base_dir=work, config=config)
        seconds.append(time.perf_counter() - t0)
        verdicts[decision.verdict.value] += 1
    report(f"QR ({args.difficulty})", seconds, verdicts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
