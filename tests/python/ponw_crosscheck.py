#!/usr/bin/env python3
"""Independent check of NeuroShard's signed proofs and transactions.

Re-implements the canonical encodings of src/ledger/proof.rs and src/ledger/tx.rs from the field
values, verifies every signature with the `ecdsa` package, and derives node ids with the Python
original's formula. Only `ecdsa` (pip install ecdsa) and the standard library are needed.
A proof that carries a receipt (data, inference) has the receipt verified too: signed by the
mnemonic's key over the receipt domain tag and the proof's encoding without the receipt.

Usage: ponw_crosscheck.py DOCUMENT.json, where the document is
  {"token", "mnemonic", "node_id_of_token", "node_id_of_mnemonic",
   "proofs": [SignedProof...], "transactions": [SignedTransaction...],
   "proof_ids": [...], "tx_ids": [...]}     (the id lists are optional)
Prints a summary; exits 1 on any mismatch, 2 on a missing dependency or unreadable document.
"""

import copy
import hashlib
import json
import math
import re
import struct
import sys
import unicodedata

try:
    import ecdsa
    from ecdsa.util import sigdecode_string, sigencode_string
except ImportError:
    print("the ecdsa package is missing: pip install ecdsa", file=sys.stderr)
    sys.exit(2)

PROOF_DOMAIN = b"NEUROSHARD/PoNW/v1"
RECEIPT_DOMAIN = b"NEUROSHARD/PoNW-receipt/v1"
TX_DOMAIN = b"NEUROSHARD/TX/v1"
PROOF_KINDS = {"uptime": 1, "training": 2, "inference": 3, "data": 4}
TX_KINDS = {"transfer": 1, "stake": 2, "unstake": 3}
PROOF_COUNTERS = (
    "timestamp_ms",
    "nonce",
    "epoch",
    "outer_round",
    "work_seconds",
    "uptime_seconds",
    "tokens",
    "batches",
    "data_samples",
)
PROOF_HASHES = ("model_hash_before", "model_hash_after", "delta_hash")
TX_NUMBERS = ("amount", "fee", "seq", "timestamp_ms", "lock_until_ms")
MAX_REQUEST_ID_BYTES = 64
CURVE = ecdsa.SECP256k1


def lower_hex(value, n_bytes, field):
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-f]{{{2 * n_bytes}}}", value):
        raise ValueError(f"{field} must be {2 * n_bytes} lower-case hex characters")
    return bytes.fromhex(value)


def optional_hex(value, n_bytes, field):
    if value == "":
        return b"\x00"
    return b"\x01" + lower_hex(value, n_bytes, field)


def u64(value, field):
    if not isinstance(value, int) or not 0 <= value < 2**64:
        raise ValueError(f"{field} must be a u64")
    return struct.pack(">Q", value)


def proof_bytes(proof):
    """The canonical encoding: every field, then the receipt block when there is a receipt."""
    out = proof_body(proof)
    receipt = proof.get("receipt")
    if receipt is None:
        return out
    out += b"\x01" + lower_hex(receipt["node_id"], 16, "receipt.node_id")
    out += lower_hex(receipt["public_key"], 33, "receipt.public_key")
    return out + lower_hex(receipt["signature"], 64, "receipt.signature")


def receipt_message(proof):
    """What the receiving party signs: its own domain tag and the proof without the receipt."""
    return RECEIPT_DOMAIN + proof_body(proof)


def proof_body(proof):
    out = PROOF_DOMAIN + bytes([PROOF_KINDS[proof["kind"]]])
    out += lower_hex(proof["node_id"], 16, "node_id")
    out += lower_hex(proof["public_key"], 33, "public_key")
    out += b"".join(u64(proof[field], field) for field in PROOF_COUNTERS)
    request_id = proof["request_id"].encode("utf-8")
    if len(request_id) > MAX_REQUEST_ID_BYTES:
        raise ValueError("request_id over 64 bytes")
    out += bytes([len(request_id)]) + request_id
    out += b"".join(optional_hex(proof[field], 32, field) for field in PROOF_HASHES)
    if not math.isfinite(proof["loss"]):
        raise ValueError("loss must be finite")
    # JSON carries the f32 as its shortest decimal; packing rounds it back to the same f32.
    return out + struct.pack(">f", proof["loss"])


def tx_bytes(tx):
    out = TX_DOMAIN + bytes([TX_KINDS[tx["kind"]]])
    out += lower_hex(tx["from"], 16, "from")
    out += lower_hex(tx["public_key"], 33, "public_key")
    out += optional_hex(tx["to"], 16, "to")
    return out + b"".join(u64(tx[field], field) for field in TX_NUMBERS)


def node_id_of(compressed_public_key):
    return hashlib.sha256(compressed_public_key).hexdigest()[:32]


def signing_key_of_token(token):
    """The Python original: the secret key is SHA-256 of the token string."""
    secret = hashlib.sha256(token.encode()).digest()
    return ecdsa.SigningKey.from_string(secret, curve=CURVE, hashfunc=hashlib.sha256)


def token_of_mnemonic(mnemonic):
    """Hex of the first 32 bytes of the BIP39 seed (empty passphrase)."""
    normalized = unicodedata.normalize("NFKD", mnemonic).encode("utf-8")
    return hashlib.pbkdf2_hmac("sha512", normalized, b"mnemonic", 2048)[:32].hex()


def compressed(signing_key):
    return signing_key.get_verifying_key().to_string("compressed")


def signature_verifies(public_key_hex, message, signature_hex):
    """ECDSA over SHA-256 of the message, 64-byte r||s with s in the low half (as Rust requires)."""
    try:
        signature = lower_hex(signature_hex, 64, "signature")
        key = ecdsa.VerifyingKey.from_string(
            bytes.fromhex(public_key_hex), curve=CURVE, hashfunc=hashlib.sha256
        )
        low_s = int.from_bytes(signature[32:], "big") <= CURVE.order // 2
        return low_s and key.verify(
            signature, message, hashfunc=hashlib.sha256, sigdecode=sigdecode_string
        )
    except (ValueError, ecdsa.BadSignatureError, ecdsa.MalformedPointError):
        return False


def rfc6979_low_s_signature(signing_key, message):
    """What libsecp256k1 produces: the RFC 6979 deterministic signature, normalised to low S."""
    signature = signing_key.sign_deterministic(
        message, hashfunc=hashlib.sha256, sigencode=sigencode_string
    )
    s = int.from_bytes(signature[32:], "big")
    if s > CURVE.order // 2:
        s = CURVE.order - s
    return (signature[:32] + s.to_bytes(32, "big")).hex()


class Check:
    def __init__(self):
        self.failures = []
        self.passed = 0

    def expect(self, condition, what):
        if condition:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"MISMATCH: {what}")


def encoded(encode, fields, check, what):
    try:
        return encode(fields)
    except (KeyError, ValueError, TypeError, OverflowError) as error:
        check.expect(False, f"{what}: cannot encode: {error!r}")
        return None


def check_signed(check, what, encode, signed, sender_field, signing_key, expected_id):
    """Whether the fields could be encoded at all (a mismatch is recorded either way)."""
    fields = {key: value for key, value in signed.items() if key != "signature"}
    message = encoded(encode, fields, check, what)
    if message is None:
        return False
    check.expect(
        signature_verifies(fields["public_key"], message, signed["signature"]),
        f"{what}: signature does not verify over the Python encoding",
    )
    check.expect(
        fields[sender_field] == node_id_of(bytes.fromhex(fields["public_key"])),
        f"{what}: {sender_field} is not sha256(public key)[:32]",
    )
    check.expect(
        fields["public_key"] == compressed(signing_key).hex(),
        f"{what}: public key is not the token's",
    )
    check.expect(
        signed["signature"] == rfc6979_low_s_signature(signing_key, message),
        f"{what}: signature differs from the RFC 6979 low-S signature",
    )
    if expected_id is not None:
        check.expect(
            hashlib.sha256(message).hexdigest() == expected_id,
            f"{what}: id is not sha256 of the Python encoding",
        )
    return True


def check_receipt(check, what, signed, receiver_key):
    """The receipt verifies over the receipt message, by the receiver's key, not the claimant's."""
    receipt = signed["receipt"]
    fields = {key: value for key, value in signed.items() if key != "signature"}
    message = encoded(receipt_message, fields, check, f"{what} receipt")
    if message is None:
        return
    check.expect(
        signature_verifies(receipt["public_key"], message, receipt["signature"]),
        f"{what}: the receipt does not verify over the Python receipt message",
    )
    check.expect(
        receipt["node_id"] == node_id_of(bytes.fromhex(receipt["public_key"])),
        f"{what}: receipt node_id is not sha256(receiver public key)[:32]",
    )
    check.expect(
        receipt["public_key"] == compressed(receiver_key).hex(),
        f"{what}: the receipt's key is not the mnemonic's",
    )
    check.expect(
        receipt["node_id"] != signed["node_id"],
        f"{what}: the receipt is the claimant's own",
    )
    check.expect(
        receipt["signature"] == rfc6979_low_s_signature(receiver_key, message),
        f"{what}: receipt signature differs from the RFC 6979 low-S signature",
    )
    tampered = copy.deepcopy(fields)
    tampered["data_samples"] ^= 1
    check.expect(
        not signature_verifies(
            receipt["public_key"], receipt_message(tampered), receipt["signature"]
        ),
        f"{what}: the receipt still verifies with data_samples ^ 1",
    )


def check_tampered_copy_fails(check, what, encode, signed, field):
    tampered = copy.deepcopy(signed)
    tampered[field] ^= 1  # stays a u64
    fields = {key: value for key, value in tampered.items() if key != "signature"}
    check.expect(
        not signature_verifies(fields["public_key"], encode(fields), tampered["signature"]),
        f"{what}: a copy with {field} ^ 1 still verifies",
    )


def main(path):
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except (OSError, ValueError) as error:
        print(f"cannot read {path}: {error}", file=sys.stderr)
        return 2
    check = Check()

    token_key = signing_key_of_token(document["token"])
    check.expect(
        node_id_of(compressed(token_key)) == document["node_id_of_token"],
        "node_id of the hex token",
    )
    mnemonic_key = signing_key_of_token(token_of_mnemonic(document["mnemonic"]))
    check.expect(
        node_id_of(compressed(mnemonic_key)) == document["node_id_of_mnemonic"],
        "node_id of the mnemonic",
    )

    proofs = document["proofs"]
    receipts = 0
    proof_ids = document.get("proof_ids", [None] * len(proofs))
    for index, (signed, expected_id) in enumerate(zip(proofs, proof_ids, strict=True)):
        what = f"proof {index} ({signed.get('kind')})"
        if check_signed(check, what, proof_bytes, signed, "node_id", token_key, expected_id):
            check_tampered_copy_fails(check, what, proof_bytes, signed, "nonce")
            if signed.get("receipt") is not None:
                receipts += 1
                check_receipt(check, what, signed, mnemonic_key)

    transactions = document["transactions"]
    tx_ids = document.get("tx_ids", [None] * len(transactions))
    for index, (signed, expected_id) in enumerate(zip(transactions, tx_ids, strict=True)):
        what = f"transaction {index} ({signed.get('kind')})"
        if check_signed(check, what, tx_bytes, signed, "from", token_key, expected_id):
            check_tampered_copy_fails(check, what, tx_bytes, signed, "amount")

    print(
        f"{len(proofs)} proofs ({receipts} with a receipt), {len(transactions)} transactions: "
        f"{check.passed} checks passed, {len(check.failures)} failed"
    )
    return 1 if check.failures or not proofs or not transactions else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
