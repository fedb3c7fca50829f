//! The canonical encoding of a transaction, its id, its signature and the checks that need no
//! ledger state (sequence, balance and locks are `state`'s).
//!
//! This encoding is the spec that `tests/python/ponw_crosscheck.py` re-implements from the field
//! values: changing it means a new domain tag and the same change there. Layout, integers
//! big-endian:
//!
//! | bytes    | field                                                    |
//! |----------|----------------------------------------------------------|
//! | 16       | domain tag `NEUROSHARD/TX/v1`                            |
//! | 1        | kind: transfer 1, stake 2, unstake 3                     |
//! | 16       | from (a node_id)                                         |
//! | 33       | public_key, the compressed secp256k1 point               |
//! | 1 + 16   | to: 0 alone if empty, else 1 and the node_id's 16 bytes  |
//! | 5 × 8    | u64 amount, fee, seq, timestamp_ms, lock_until_ms        |
//!
//! Hex fields must be lower-case, so one transaction has exactly one encoding and one id. The
//! domain tag differs from the proofs', so no signed proof can pass as a transaction.

use secp256k1::PublicKey;
use sha2::{Digest, Sha256};

use super::proof::{lower_hex, parse_public_key, push_optional_hex, signature_verifies};
use super::rewards::burn_fee;
use super::verify::{ProofLimits, check_freshness};
use super::{Nano, SignedTransaction, Transaction, TxKind, TxRejection};
use crate::crypto::{self, Identity};

pub const TX_DOMAIN: &[u8] = b"NEUROSHARD/TX/v1";

/// The bytes a transaction's signature covers; `Malformed` naming the field if not canonical.
pub fn canonical_bytes(tx: &Transaction) -> Result<Vec<u8>, TxRejection> {
    encode(tx)
        .map(|(bytes, _)| bytes)
        .map_err(TxRejection::Malformed)
}

/// Fills from and public_key from `identity` and signs. Fails only on a `to` that is neither
/// empty nor a node_id (32 lower-case hex characters).
pub fn sign_transaction(
    identity: &Identity,
    mut tx: Transaction,
) -> Result<SignedTransaction, TxRejection> {
    tx.from = identity.node_id.clone();
    tx.public_key = hex::encode(identity.public.serialize());
    let signature = hex::encode(identity.sign(&canonical_bytes(&tx)?));
    Ok(SignedTransaction { tx, signature })
}

/// Hex SHA-256 of the canonical bytes (the signature is not part of it).
pub fn tx_id(tx: &Transaction) -> Result<String, TxRejection> {
    Ok(hex::encode(Sha256::digest(canonical_bytes(tx)?)))
}

/// Format, signature and key: what holds for a transaction at any age (a stored one, too).
pub fn check_signature(signed: &SignedTransaction) -> Result<(), TxRejection> {
    let tx = &signed.tx;
    let (message, public) = encode(tx).map_err(TxRejection::Malformed)?;
    if !signature_verifies(&public, &message, &signed.signature) {
        return Err(TxRejection::BadSignature);
    }
    let actual = crypto::node_id_of(&public);
    if actual != tx.from {
        return Err(TxRejection::ForeignKey {
            claimed: tx.from.clone(),
            actual,
        });
    }
    Ok(())
}

/// Every check that needs no ledger state, in order: format, signature, key, freshness, then
/// what each kind requires of amount, fee, recipient and lock.
pub fn check_transaction(
    now_ms: u64,
    signed: &SignedTransaction,
    limits: &ProofLimits,
) -> Result<(), TxRejection> {
    check_signature(signed)?;
    let tx = &signed.tx;
    check_freshness(now_ms, tx.timestamp_ms, limits)?;
    if tx.amount == 0 {
        return Err(malformed("amount must be positive"));
    }
    match tx.kind {
        TxKind::Transfer => {
            if tx.to.is_empty() {
                return Err(malformed("to must name the recipient of a transfer"));
            }
            if tx.to == tx.from {
                return Err(malformed("to must not be the sender's own node_id"));
            }
            require_fee(tx, burn_fee(tx.amount))?;
            require_no_lock(tx)
        }
        TxKind::Stake => {
            require_no_recipient(tx)?;
            require_fee(tx, 0)?;
            let lock_ms = tx.lock_until_ms.checked_sub(tx.timestamp_ms);
            let bounds_ms =
                u128::from(limits.min_lock_s) * 1000..=u128::from(limits.max_lock_s) * 1000;
            if !lock_ms.is_some_and(|lock_ms| bounds_ms.contains(&u128::from(lock_ms))) {
                return Err(malformed(&format!(
                    "lock_until_ms must be {} to {} s after timestamp_ms",
                    limits.min_lock_s, limits.max_lock_s
                )));
            }
            Ok(())
        }
        TxKind::Unstake => {
            require_no_recipient(tx)?;
            require_fee(tx, 0)?;
            require_no_lock(tx)
        }
    }
}

fn encode(tx: &Transaction) -> Result<(Vec<u8>, PublicKey), String> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(TX_DOMAIN);
    out.push(kind_byte(tx.kind));
    out.extend_from_slice(&lower_hex::<16>("from", &tx.from)?);
    let public = parse_public_key("public_key", &tx.public_key)?;
    out.extend_from_slice(&public.serialize());
    push_optional_hex::<16>(&mut out, "to", &tx.to)?;
    for value in [tx.amount, tx.fee, tx.seq, tx.timestamp_ms, tx.lock_until_ms] {
        out.extend_from_slice(&value.to_be_bytes());
    }
    Ok((out, public))
}

fn kind_byte(kind: TxKind) -> u8 {
    match kind {
        TxKind::Transfer => 1,
        TxKind::Stake => 2,
        TxKind::Unstake => 3,
    }
}

fn malformed(message: &str) -> TxRejection {
    TxRejection::Malformed(message.into())
}

fn require_fee(tx: &Transaction, expected: Nano) -> Result<(), TxRejection> {
    if tx.fee != expected {
        return Err(TxRejection::BadFee {
            expected,
            got: tx.fee,
        });
    }
    Ok(())
}

fn require_no_recipient(tx: &Transaction) -> Result<(), TxRejection> {
    if !tx.to.is_empty() {
        return Err(malformed(
            "to must be empty: only transfers have a recipient",
        ));
    }
    Ok(())
}

fn require_no_lock(tx: &Transaction) -> Result<(), TxRejection> {
    if tx.lock_until_ms != 0 {
        return Err(malformed("lock_until_ms must be 0: only stakes lock"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::proof::tests::{
        Edit, NOW_MS, flip_first_hex, high_s_twin, identity, other_identity,
    };

    const DAY_MS: u64 = 86_400_000;

    fn transfer() -> Transaction {
        Transaction {
            kind: TxKind::Transfer,
            from: String::new(),
            public_key: String::new(),
            to: other_identity().node_id,
            amount: 2_000_000_000,
            fee: 100_000_000,
            seq: 3,
            timestamp_ms: NOW_MS,
            lock_until_ms: 0,
        }
    }

    fn stake(lock_ms: u64) -> Transaction {
        Transaction {
            kind: TxKind::Stake,
            to: String::new(),
            fee: 0,
            lock_until_ms: NOW_MS + lock_ms,
            ..transfer()
        }
    }

    fn unstake() -> Transaction {
        Transaction {
            kind: TxKind::Unstake,
            to: String::new(),
            fee: 0,
            ..transfer()
        }
    }

    fn signed(tx: Transaction) -> SignedTransaction {
        sign_transaction(&identity(), tx).unwrap()
    }

    fn check(signed: &SignedTransaction) -> Result<(), TxRejection> {
        check_transaction(NOW_MS, signed, &ProofLimits::default())
    }

    fn malformed_message(result: Result<(), TxRejection>) -> String {
        match result {
            Err(TxRejection::Malformed(message)) => message,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    // Known answers computed independently by tests/python/ponw_crosscheck.py's encoder.
    const KNOWN_ENCODING: &str = concat!(
        "4e4555524f53484152442f54582f7631", // NEUROSHARD/TX/v1
        "01",                               // transfer
        "2b6ccba5cbbc65e12a7e60213fcd871e",
        "0382d578c4ce78d9a0d9d85dc738ba5a3d62a029b605e417311fc6b2578462f55c",
        "01",
        "4cf401cbf1c75f61f6f4d2474e4f7201", // to
        "0000000077359400",                 // amount, 2 NEURO
        "0000000005f5e100",                 // fee, 0.1 NEURO
        "0000000000000003",                 // seq
        "0000018bcfe56800",                 // timestamp_ms
        "0000000000000000",                 // lock_until_ms
    );
    const KNOWN_TX_ID: &str = "7312f55632eb645e07df8615e8e60945abc4095bb4789e091a7f749d5ddf3588";
    const KNOWN_SIGNATURE: &str = concat!(
        "91d56e0f3e12d0ffdb4eeeef0f5a2a3a8ca8ad7f762d81519eb2172f813e8dce",
        "0033693a544e22c657ed08a5c3f359d2a86dbce74ffbdc57d8c2db37ecefc34a",
    );

    #[test]
    fn a_fixed_transfer_has_the_known_encoding_and_id_and_passes() {
        let signed = signed(transfer());
        assert_eq!(signed.tx.from, identity().node_id);
        assert_eq!(
            hex::encode(canonical_bytes(&signed.tx).unwrap()),
            KNOWN_ENCODING
        );
        assert_eq!(tx_id(&signed.tx).unwrap(), KNOWN_TX_ID);
        assert_eq!(signed.signature, KNOWN_SIGNATURE);
        assert_eq!(check(&signed), Ok(()));
    }

    #[test]
    fn valid_stakes_and_unstakes_pass() {
        assert_eq!(check(&signed(stake(DAY_MS))), Ok(()));
        assert_eq!(check(&signed(stake(365 * DAY_MS))), Ok(()));
        assert_eq!(check(&signed(unstake())), Ok(()));
    }

    #[test]
    fn tampering_any_field_breaks_the_signature() {
        let original = signed(transfer());
        let tamperings: Vec<Edit<SignedTransaction>> = vec![
            ("kind", |s| s.tx.kind = TxKind::Stake),
            ("from", |s| s.tx.from = flip_first_hex(&s.tx.from)),
            ("public_key", |s| {
                s.tx.public_key = hex::encode(other_identity().public.serialize())
            }),
            ("to", |s| s.tx.to = flip_first_hex(&s.tx.to)),
            ("to emptied", |s| s.tx.to.clear()),
            ("amount", |s| s.tx.amount += 1),
            ("fee", |s| s.tx.fee += 1),
            ("seq", |s| s.tx.seq += 1),
            ("timestamp_ms", |s| s.tx.timestamp_ms += 1),
            ("lock_until_ms", |s| s.tx.lock_until_ms += 1),
            ("signature", |s| s.signature = flip_first_hex(&s.signature)),
        ];
        for (field, tamper) in tamperings {
            let mut tampered = original.clone();
            tamper(&mut tampered);
            assert_ne!(tampered, original, "{field} did not change");
            assert_eq!(check(&tampered), Err(TxRejection::BadSignature), "{field}");
        }
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let mut claimed = signed(transfer());
        claimed.signature = sign_transaction(&other_identity(), transfer())
            .unwrap()
            .signature;
        assert_eq!(check(&claimed), Err(TxRejection::BadSignature));
    }

    #[test]
    fn a_high_s_signature_is_refused() {
        let mut high = signed(transfer());
        let low: [u8; 64] = hex::decode(&high.signature).unwrap().try_into().unwrap();
        high.signature = hex::encode(high_s_twin(&low));
        assert_eq!(check(&high), Err(TxRejection::BadSignature));
    }

    #[test]
    fn a_matching_signature_by_a_foreign_key_is_refused() {
        let other = other_identity();
        let mut tx = transfer();
        tx.to = String::new();
        tx.kind = TxKind::Unstake;
        tx.fee = 0;
        tx.from = identity().node_id;
        tx.public_key = hex::encode(other.public.serialize());
        let signature = hex::encode(other.sign(&canonical_bytes(&tx).unwrap()));
        assert_eq!(
            check(&SignedTransaction { tx, signature }),
            Err(TxRejection::ForeignKey {
                claimed: identity().node_id,
                actual: other.node_id,
            })
        );
    }

    #[test]
    fn stale_and_future_transactions_are_refused() {
        let limits = ProofLimits::default();
        let tx = signed(transfer());
        let window_ms = limits.freshness_window_s * 1000;
        assert_eq!(check_transaction(NOW_MS + window_ms, &tx, &limits), Ok(()));
        assert_eq!(
            check_transaction(NOW_MS + window_ms + 1000, &tx, &limits),
            Err(TxRejection::Stale {
                age_s: limits.freshness_window_s + 1,
                window_s: limits.freshness_window_s,
            })
        );
        let ahead_ms = limits.max_future_s * 1000;
        assert_eq!(check_transaction(NOW_MS - ahead_ms, &tx, &limits), Ok(()));
        assert_eq!(
            check_transaction(NOW_MS - ahead_ms - 1000, &tx, &limits),
            Err(TxRejection::Future {
                ahead_s: limits.max_future_s + 1
            })
        );
    }

    #[test]
    fn a_zero_amount_is_refused() {
        let mut tx = transfer();
        tx.amount = 0;
        tx.fee = 0;
        assert!(malformed_message(check(&signed(tx))).contains("amount"));
    }

    #[test]
    fn a_transfer_needs_the_exact_burn_fee() {
        for fee in [0, 99_999_999, 100_000_001] {
            let mut tx = transfer();
            tx.fee = fee;
            assert_eq!(
                check(&signed(tx)),
                Err(TxRejection::BadFee {
                    expected: 100_000_000,
                    got: fee
                })
            );
        }
        let mut tx = transfer();
        tx.amount = 21;
        tx.fee = 2; // 5% rounded up
        assert_eq!(check(&signed(tx)), Ok(()));
    }

    #[test]
    fn a_transfer_needs_another_recipient_and_no_lock() {
        let mut to_self = transfer();
        to_self.to = identity().node_id;
        assert!(malformed_message(check(&signed(to_self))).starts_with("to "));
        let mut nobody = transfer();
        nobody.to.clear();
        assert!(malformed_message(check(&signed(nobody))).starts_with("to "));
        let mut locked = transfer();
        locked.lock_until_ms = NOW_MS + DAY_MS;
        assert!(malformed_message(check(&signed(locked))).contains("lock_until_ms"));
    }

    #[test]
    fn a_recipient_that_is_not_a_node_id_is_malformed() {
        for to in [
            other_identity().node_id.to_uppercase(),
            "ab".repeat(15),
            "ab".repeat(17),
        ] {
            let mut tx = signed(transfer()).tx;
            tx.to = to;
            assert!(malformed_message(canonical_bytes(&tx).map(drop)).starts_with("to "));
            assert!(sign_transaction(&identity(), tx).is_err());
        }
    }

    #[test]
    fn non_canonical_from_and_public_key_are_malformed() {
        let mut tx = signed(transfer()).tx;
        tx.from = tx.from.to_uppercase();
        assert!(malformed_message(canonical_bytes(&tx).map(drop)).contains("from"));
        let mut tx = signed(transfer()).tx;
        tx.public_key = tx.public_key.to_uppercase();
        assert!(malformed_message(canonical_bytes(&tx).map(drop)).contains("public_key"));
    }

    #[test]
    fn a_stake_lock_outside_the_bounds_is_refused() {
        for lock_ms in [0, DAY_MS - 1, 365 * DAY_MS + 1, u64::MAX - NOW_MS] {
            assert!(
                malformed_message(check(&signed(stake(lock_ms)))).contains("lock_until_ms"),
                "lock of {lock_ms} ms"
            );
        }
        let mut before = stake(DAY_MS);
        before.lock_until_ms = NOW_MS - 1;
        assert!(malformed_message(check(&signed(before))).contains("lock_until_ms"));
    }

    #[test]
    fn a_stake_has_no_fee_and_no_recipient() {
        let mut with_fee = stake(DAY_MS);
        with_fee.fee = 1;
        assert_eq!(
            check(&signed(with_fee)),
            Err(TxRejection::BadFee {
                expected: 0,
                got: 1
            })
        );
        let mut with_recipient = stake(DAY_MS);
        with_recipient.to = other_identity().node_id;
        assert!(malformed_message(check(&signed(with_recipient))).starts_with("to "));
    }

    #[test]
    fn an_unstake_has_no_fee_recipient_or_lock() {
        let mut with_fee = unstake();
        with_fee.fee = 5;
        assert_eq!(
            check(&signed(with_fee)),
            Err(TxRejection::BadFee {
                expected: 0,
                got: 5
            })
        );
        let mut with_recipient = unstake();
        with_recipient.to = other_identity().node_id;
        assert!(malformed_message(check(&signed(with_recipient))).starts_with("to "));
        let mut locked = unstake();
        locked.lock_until_ms = NOW_MS + DAY_MS;
        assert!(malformed_message(check(&signed(locked))).contains("lock_until_ms"));
    }

    #[test]
    fn a_signed_transaction_round_trips_through_json() {
        let original = signed(transfer());
        let json = serde_json::to_string(&original).unwrap();
        let back: SignedTransaction = serde_json::from_str(&json).unwrap();
        assert_eq!(back, original);
        assert_eq!(check(&back), Ok(()));
    }
}
