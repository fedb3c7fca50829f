#!/usr/bin/env python3
"""Baseline for benches/ledger.rs: verify the same signed proofs with the `ecdsa` package (the
canonical encoding from tests/python/ponw_crosscheck.py) and insert the same rows with sqlite3
(WAL, synchronous=FULL, one row per transaction). Prints JSON {verify_per_s, insert_per_s}.

Usage: ledger_python.py PROOFS.json INSERTS
"""

import json
import os
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
import ponw_crosscheck as spec  # noqa: E402  (the independent encoder)
import ecdsa  # noqa: E402
from ecdsa.util import sigdecode_string  # noqa: E402
import hashlib  # noqa: E402


def verify(signed):
    message = spec.proof_bytes(signed)
    key = ecdsa.VerifyingKey.from_string(bytes.fromhex(signed["public_key"]), curve=spec.CURVE)
    return key.verify(
        bytes.fromhex(signed["signature"]), message, hashfunc=hashlib.sha256, sigdecode=sigdecode_string
    )


def main(path, inserts):
    with open(path, encoding="utf-8") as file:
        proofs = json.load(file)
    sample = proofs[: min(len(proofs), 300)]  # pure-Python ECDSA is slow; a sample is enough
    start = time.perf_counter()
    assert all(verify(p) for p in sample)
    verify_per_s = len(sample) / (time.perf_counter() - start)

    rows = proofs[:inserts]
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "py.sqlite"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE proofs (id TEXT PRIMARY KEY, node_id TEXT, kind TEXT, timestamp_ms INTEGER,"
            " nonce INTEGER, body TEXT, UNIQUE(node_id, nonce))"
        )
        start = time.perf_counter()
        for p in rows:
            body = json.dumps(p)
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO proofs VALUES (?, ?, ?, ?, ?, ?)",
                (hashlib.sha256(spec.proof_bytes(p)).hexdigest(), p["node_id"], p["kind"],
                 p["timestamp_ms"], p["nonce"], body),
            )
            db.execute("COMMIT")
        insert_per_s = len(rows) / (time.perf_counter() - start)
    print(json.dumps({"verify_per_s": verify_per_s, "insert_per_s": insert_per_s}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
