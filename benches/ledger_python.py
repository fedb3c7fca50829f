#!/usr/bin/env python3
"""Baseline for benches/ledger.rs: verify the same signed proofs with the `ecdsa` package (the
canonical encoding from tests/python/ponw_crosscheck.py) and insert the same rows with sqlite3
(WAL, synchronous=FULL, one row per transaction). Prints JSON {verify_per_s, insert_per_s}.
For benches/ledger_history.rs (`history`): insert the rows of ROWS.jsonl ({id, node_id,
timestamp_ms, body}) 1000 per transaction, all but the last LATE, then those one per
transaction. Prints JSON {sync_per_s, insert_per_s}.

Usage: ledger_python.py PROOFS.json INSERTS
       ledger_python.py history ROWS.jsonl LATE
"""

import json
import os
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
import hashlib  # noqa: E402


def open_db(directory):
    """The ledger's pragmas and a proofs table as the Rust store has it (fewer columns)."""
    db = sqlite3.connect(os.path.join(directory, "py.sqlite"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE proofs (id TEXT PRIMARY KEY, node_id TEXT, kind TEXT, timestamp_ms INTEGER,"
        " nonce INTEGER, body TEXT, UNIQUE(node_id, nonce))"
    )
    return db


def history(path, late):
    with open(path, encoding="utf-8") as file:
        rows = [json.loads(line) for line in file]
    values = [(r["id"], r["node_id"], "event", r["timestamp_ms"], n, r["body"]) for n, r in enumerate(rows)]
    bulk, tail = values[: len(values) - late], values[len(values) - late :]
    insert = "INSERT INTO proofs VALUES (?, ?, ?, ?, ?, ?)"
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(tmp)
        start = time.perf_counter()
        for i in range(0, len(bulk), 1000):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(insert, bulk[i : i + 1000])
            db.execute("COMMIT")
        sync_per_s = len(bulk) / (time.perf_counter() - start)
        start = time.perf_counter()
        for row in tail:
            db.execute("BEGIN IMMEDIATE")
            db.execute(insert, row)
            db.execute("COMMIT")
        insert_per_s = len(tail) / (time.perf_counter() - start)
    print(json.dumps({"sync_per_s": sync_per_s, "insert_per_s": insert_per_s}))


def verify(signed):
    import ecdsa
    import ponw_crosscheck as spec  # the independent encoder
    from ecdsa.util import sigdecode_string

    message = spec.proof_bytes(signed)
    key = ecdsa.VerifyingKey.from_string(bytes.fromhex(signed["public_key"]), curve=spec.CURVE)
    return key.verify(
        bytes.fromhex(signed["signature"]), message, hashfunc=hashlib.sha256, sigdecode=sigdecode_string
    )


def main(path, inserts):
    import ponw_crosscheck as spec
    with open(path, encoding="utf-8") as file:
        proofs = json.load(file)
    sample = proofs[: min(len(proofs), 300)]  # pure-Python ECDSA is slow; a sample is enough
    start = time.perf_counter()
    assert all(verify(p) for p in sample)
    verify_per_s = len(sample) / (time.perf_counter() - start)

    rows = proofs[:inserts]
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(tmp)
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
    if sys.argv[1] == "history":
        history(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1], int(sys.argv[2]))
