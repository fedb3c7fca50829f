//! The canonical encoding of a Proof of Neural Work, its id and its signature.
//!
//! This encoding is the spec that `tests/python/ponw_crosscheck.py` re-implements from the field
//! values: changing it means a new domain tag and the same change there. Layout, integers
//! big-endian:
//!
//! | bytes        | field                                                                   |
//! |--------------|-------------------------------------------------------------------------|
//! | 18           | domain tag `NEUROSHARD/PoNW/v1`                                         |
//! | 1            | kind: uptime 1, training 2, inference 3, data 4                         |
//! | 16           | node_id                                                                 |
//! | 33           | public_key, the compressed secp256k1 point                              |
//! | 9 × 8        | u64 timestamp_ms, nonce, epoch, outer_round, work_seconds,              |
//! |              | uptime_seconds, tokens, batches, data_samples                           |
//! | 1 + n        | request_id: u8 length n ≤ 64, then its UTF-8 bytes                      |
//! | 3 × (1 + 32) | model_hash_before, model_hash_after, delta_hash: 0 alone if empty, else |
//! |              | 1 and the 32 bytes                                                      |
//! | 4            | loss, IEEE 754 f32 bits                                                 |
//! | 0 or 1 + 113 | receipt: nothing if absent, else 1, the receiver's node_id (16), its    |
//! |              | compressed public key (33) and its compact signature (64)               |
//!
//! Hex fields must be lower-case and every field in range, so one proof has exactly one encoding
//! (and one id) and its signature cannot be carried over to a re-spelled copy. The receipt is a
//! trailing optional block, so a proof without one encodes exactly as before it existed (same
//! bytes, id and signature); the encoding is self-delimiting, so the block is unambiguous.
//!
//! A receipt is the receiving party's signature over `NEUROSHARD/PoNW-receipt/v1` followed by
//! the proof's encoding without the receipt block (its own domain tag, so a receipt can never
//! pass for a proof signature or the other way round). The claimant signs the whole encoding,
//! receipt included.

use secp256k1::PublicKey;
use sha2::{Digest, Sha256};

use super::{Proof, ProofKind, ProofRejection, Receipt, SignedProof, Unreceipted};
use crate::crypto::{self, Identity};

pub const PROOF_DOMAIN: &[u8] = b"NEUROSHARD/PoNW/v1";
pub const RECEIPT_DOMAIN: &[u8] = b"NEUROSHARD/PoNW-receipt/v1";
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// The bytes a proof's signature covers; `Malformed` naming the field if it is not canonical.
pub fn canonical_bytes(proof: &Proof) -> Result<Vec<u8>, ProofRejection> {
    encode(proof)
        .map(|(bytes, _)| bytes)
        .map_err(ProofRejection::Malformed)
}

/// Fills node_id and public_key from `identity` and signs the proof. Fails only on a proof that
/// is not canonical (a hash that is not 64 lower-case hex, a request_id over 64 bytes, a
/// non-finite loss); a node that builds its hashes with `hex::encode` never sees it.
pub fn sign_proof(identity: &Identity, mut proof: Proof) -> Result<SignedProof, ProofRejection> {
    proof.node_id = identity.node_id.clone();
    proof.public_key = hex::encode(identity.public.serialize());
    let signature = hex::encode(identity.sign(&canonical_bytes(&proof)?));
    Ok(SignedProof { proof, signature })
}

/// Hex SHA-256 of the canonical bytes: the proof's key in the store. The signature is not part
/// of it, so the same proof gossiped twice has one id.
pub fn proof_id(proof: &Proof) -> Result<String, ProofRejection> {
    Ok(hex::encode(Sha256::digest(canonical_bytes(proof)?)))
}

/// The proof is canonical, the signature is the public key's (low-S) over its canonical bytes,
/// and the node_id is that key's.
pub fn check_signature(signed: &SignedProof) -> Result<(), ProofRejection> {
    let (message, public) = encode(&signed.proof).map_err(ProofRejection::Malformed)?;
    if !signature_verifies(&public, &message, &signed.signature) {
        return Err(ProofRejection::BadSignature);
    }
    let actual = crypto::node_id_of(&public);
    if actual != signed.proof.node_id {
        return Err(ProofRejection::ForeignKey {
            claimed: signed.proof.node_id.clone(),
            actual,
        });
    }
    Ok(())
}

/// Whether a kind of proof earns only with a receipt: the work (data served, an inference
/// answered) has a receiver who can vouch for it; training and uptime are checked otherwise.
pub fn needs_receipt(kind: ProofKind) -> bool {
    matches!(kind, ProofKind::Data | ProofKind::Inference)
}

/// The bytes a receipt's signature covers: the receipt domain tag and the proof's canonical
/// encoding without its receipt block (whatever receipt `proof` carries is ignored).
pub fn receipt_message(proof: &Proof) -> Result<Vec<u8>, ProofRejection> {
    let (body, _) = encode_body(proof).map_err(ProofRejection::Malformed)?;
    let mut message = Vec::with_capacity(RECEIPT_DOMAIN.len() + body.len());
    message.extend_from_slice(RECEIPT_DOMAIN);
    message.extend_from_slice(&body);
    Ok(message)
}

/// The receiver's receipt for `proof` (which the claimant then signs with the receipt in it).
pub fn sign_receipt(receiver: &Identity, proof: &Proof) -> Result<Receipt, ProofRejection> {
    let message = receipt_message(proof)?;
    Ok(Receipt {
        node_id: receiver.node_id.clone(),
        public_key: hex::encode(receiver.public.serialize()),
        signature: hex::encode(receiver.sign(&message)),
    })
}

/// Whether someone other than the claimant vouches for the proof's work: a receipt whose key
/// is not the claimant's, whose node_id is its key's, and whose signature verifies over
/// `receipt_message`. Says nothing of the claimant's own signature (`check_signature`).
pub fn check_receipt(proof: &Proof) -> Result<(), Unreceipted> {
    let Some(receipt) = &proof.receipt else {
        return Err(Unreceipted::Missing);
    };
    if receipt.public_key == proof.public_key || receipt.node_id == proof.node_id {
        return Err(Unreceipted::OwnReceipt);
    }
    let public = parse_public_key("receipt.public_key", &receipt.public_key)
        .map_err(|_| Unreceipted::BadSignature)?;
    let message = receipt_message(proof).map_err(|_| Unreceipted::BadSignature)?;
    if !signature_verifies(&public, &message, &receipt.signature) {
        return Err(Unreceipted::BadSignature);
    }
    let actual = crypto::node_id_of(&public);
    if actual != receipt.node_id {
        return Err(Unreceipted::ForeignKey {
            claimed: receipt.node_id.clone(),
            actual,
        });
    }
    Ok(())
}

fn encode(proof: &Proof) -> Result<(Vec<u8>, PublicKey), String> {
    let (mut out, public) = encode_body(proof)?;
    if let Some(receipt) = &proof.receipt {
        out.push(1);
        out.extend_from_slice(&lower_hex::<16>("receipt.node_id", &receipt.node_id)?);
        let receiver = parse_public_key("receipt.public_key", &receipt.public_key)?;
        out.extend_from_slice(&receiver.serialize());
        out.extend_from_slice(&lower_hex::<64>("receipt.signature", &receipt.signature)?);
    }
    Ok((out, public))
}

/// Every field but the receipt.
fn encode_body(proof: &Proof) -> Result<(Vec<u8>, PublicKey), String> {
    let mut out = Vec::with_capacity(256 + 114);
    out.extend_from_slice(PROOF_DOMAIN);
    out.push(kind_byte(proof.kind));
    out.extend_from_slice(&lower_hex::<16>("node_id", &proof.node_id)?);
    let public = parse_public_key("public_key", &proof.public_key)?;
    out.extend_from_slice(&public.serialize());
    for value in [
        proof.timestamp_ms,
        proof.nonce,
        proof.epoch,
        proof.outer_round,
        proof.work_seconds,
        proof.uptime_seconds,
        proof.tokens,
        proof.batches,
        proof.data_samples,
    ] {
        out.extend_from_slice(&value.to_be_bytes());
    }
    let request_id = proof.request_id.as_bytes();
    if request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(format!(
            "request_id is {} bytes, at most {MAX_REQUEST_ID_BYTES}",
            request_id.len()
        ));
    }
    out.push(request_id.len() as u8);
    out.extend_from_slice(request_id);
    for (field, value) in [
        ("model_hash_before", &proof.model_hash_before),
        ("model_hash_after", &proof.model_hash_after),
        ("delta_hash", &proof.delta_hash),
    ] {
        push_optional_hex::<32>(&mut out, field, value)?;
    }
    if !proof.loss.is_finite() {
        return Err("loss must be finite".into());
    }
    out.extend_from_slice(&proof.loss.to_bits().to_be_bytes());
    Ok((out, public))
}

fn kind_byte(kind: ProofKind) -> u8 {
    match kind {
        ProofKind::Uptime => 1,
        ProofKind::Training => 2,
        ProofKind::Inference => 3,
        ProofKind::Data => 4,
    }
}

/// Exactly `2·N` lower-case hex characters (upper case would be a second spelling of one value).
pub(super) fn lower_hex<const N: usize>(field: &str, value: &str) -> Result<[u8; N], String> {
    let canonical = value.len() == 2 * N
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let mut bytes = [0u8; N];
    if !canonical || hex::decode_to_slice(value, &mut bytes).is_err() {
        return Err(format!(
            "{field} must be {} lower-case hex characters",
            2 * N
        ));
    }
    Ok(bytes)
}

/// Appends 0 for an empty field, else 1 and its `N` bytes.
pub(super) fn push_optional_hex<const N: usize>(
    out: &mut Vec<u8>,
    field: &str,
    value: &str,
) -> Result<(), String> {
    if value.is_empty() {
        out.push(0);
    } else {
        let bytes = lower_hex::<N>(field, value).map_err(|_| {
            format!(
                "{field} must be empty or {} lower-case hex characters",
                2 * N
            )
        })?;
        out.push(1);
        out.extend_from_slice(&bytes);
    }
    Ok(())
}

/// A compressed secp256k1 point as 66 lower-case hex characters.
pub(super) fn parse_public_key(field: &str, value: &str) -> Result<PublicKey, String> {
    PublicKey::from_byte_array_compressed(lower_hex::<33>(field, value)?)
        .map_err(|_| format!("{field} is not a compressed secp256k1 point"))
}

/// `signature` is 128 lower-case hex characters of a low-S compact signature of `message`.
pub(super) fn signature_verifies(public: &PublicKey, message: &[u8], signature: &str) -> bool {
    lower_hex::<64>("signature", signature)
        .is_ok_and(|signature| crypto::verify(public, message, &signature))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Token of the fixed test key: "00…01".
    pub(in crate::ledger) const TOKEN: &str =
        "0000000000000000000000000000000000000000000000000000000000000001";
    pub(in crate::ledger) const OTHER_TOKEN: &str =
        "0000000000000000000000000000000000000000000000000000000000000002";
    pub(in crate::ledger) const NOW_MS: u64 = 1_700_000_000_000;

    pub(in crate::ledger) fn identity() -> Identity {
        Identity::from_token(TOKEN).unwrap()
    }

    pub(in crate::ledger) fn other_identity() -> Identity {
        Identity::from_token(OTHER_TOKEN).unwrap()
    }

    /// A training proof with every field set (so every field is covered by the encoding).
    pub(in crate::ledger) fn training_proof() -> Proof {
        Proof {
            node_id: String::new(),
            public_key: String::new(),
            kind: ProofKind::Training,
            timestamp_ms: NOW_MS,
            nonce: 7,
            epoch: 2,
            outer_round: 41,
            work_seconds: 90,
            uptime_seconds: 90,
            tokens: 3000,
            batches: 120,
            data_samples: 480,
            request_id: "req-1".into(),
            model_hash_before: "11".repeat(32),
            model_hash_after: "22".repeat(32),
            delta_hash: "33".repeat(32),
            loss: 2.5,
            receipt: None,
        }
    }

    /// A data proof of `identity()` claiming 10⁷ samples in 600 s, without a receipt.
    pub(in crate::ledger) fn data_proof() -> Proof {
        Proof {
            timestamp_ms: NOW_MS,
            nonce: 8,
            work_seconds: 600,
            data_samples: 10_000_000,
            ..Proof::empty(ProofKind::Data)
        }
    }

    /// `proof` with `receiver`'s receipt, signed by `identity()`.
    pub(in crate::ledger) fn receipted(receiver: &Identity, proof: Proof) -> SignedProof {
        let mut proof = sign_proof(&identity(), proof).unwrap().proof;
        proof.receipt = Some(sign_receipt(receiver, &proof).unwrap());
        sign_proof(&identity(), proof).unwrap()
    }

    pub(in crate::ledger) fn signed_training_proof() -> SignedProof {
        sign_proof(&identity(), training_proof()).unwrap()
    }

    // Known answers computed independently by tests/python/ponw_crosscheck.py's encoder.
    const KNOWN_NODE_ID: &str = "2b6ccba5cbbc65e12a7e60213fcd871e";
    const KNOWN_PUBLIC_KEY: &str =
        "0382d578c4ce78d9a0d9d85dc738ba5a3d62a029b605e417311fc6b2578462f55c";
    const KNOWN_ENCODING: &str = concat!(
        "4e4555524f53484152442f506f4e572f7631", // NEUROSHARD/PoNW/v1
        "02",                                   // training
        "2b6ccba5cbbc65e12a7e60213fcd871e",
        "0382d578c4ce78d9a0d9d85dc738ba5a3d62a029b605e417311fc6b2578462f55c",
        "0000018bcfe56800", // timestamp_ms
        "0000000000000007", // nonce
        "0000000000000002", // epoch
        "0000000000000029", // outer_round
        "000000000000005a", // work_seconds
        "000000000000005a", // uptime_seconds
        "0000000000000bb8", // tokens
        "0000000000000078", // batches
        "00000000000001e0", // data_samples
        "05",               // request_id length
        "7265712d31",       // request_id "req-1"
        "01",               // model_hash_before present
        "1111111111111111111111111111111111111111111111111111111111111111",
        "01", // model_hash_after present
        "2222222222222222222222222222222222222222222222222222222222222222",
        "01", // delta_hash present
        "3333333333333333333333333333333333333333333333333333333333333333",
        "40200000", // loss 2.5
    );
    const KNOWN_PROOF_ID: &str = "e54f190a932fca9c09d38433c724d91b08b2f72932be024e71c1051d2fb6b2aa";
    // libsecp256k1 signs with RFC 6979 nonces, so the signature is deterministic.
    const KNOWN_SIGNATURE: &str = concat!(
        "58339ff9b281f70dfc1cb01cb5befc28d4fbf20acf72072a454bbb0a8497cf2e",
        "0cca324b6b39e80b129763922f22973ce76e4b6cbdcae42c4f49a899c12bc074",
    );

    #[test]
    fn a_fixed_proof_has_the_known_encoding_id_and_signature() {
        let signed = signed_training_proof();
        assert_eq!(signed.proof.node_id, KNOWN_NODE_ID);
        assert_eq!(signed.proof.public_key, KNOWN_PUBLIC_KEY);
        assert_eq!(
            hex::encode(canonical_bytes(&signed.proof).unwrap()),
            KNOWN_ENCODING
        );
        assert_eq!(proof_id(&signed.proof).unwrap(), KNOWN_PROOF_ID);
        assert_eq!(signed.signature, KNOWN_SIGNATURE);
        assert_eq!(check_signature(&signed), Ok(()));
    }

    // Computed by tests/python/ponw_crosscheck.py's encoder: data_proof() of "00…01" with the
    // receipt of "00…02".
    const KNOWN_RECEIPTED_ENCODING: &str = concat!(
        "4e4555524f53484152442f506f4e572f7631", // NEUROSHARD/PoNW/v1
        "04",                                   // data
        "2b6ccba5cbbc65e12a7e60213fcd871e",
        "0382d578c4ce78d9a0d9d85dc738ba5a3d62a029b605e417311fc6b2578462f55c",
        "0000018bcfe56800", // timestamp_ms
        "0000000000000008", // nonce
        "0000000000000000", // epoch
        "0000000000000000", // outer_round
        "0000000000000258", // work_seconds 600
        "0000000000000000", // uptime_seconds
        "0000000000000000", // tokens
        "0000000000000000", // batches
        "0000000000989680", // data_samples 10^7
        "00",               // request_id empty
        "00",               // model_hash_before absent
        "00",               // model_hash_after absent
        "00",               // delta_hash absent
        "00000000",         // loss 0
        "01",               // receipt present
        "4cf401cbf1c75f61f6f4d2474e4f7201",
        "02d81ae0349e85377ef530065b2ff59da6ec73fd78b3b82892bd5795b3e45c3904",
        "63c1881a07d5649993eb226a9468e60aa1fd25810a464dfb4957a0453b595b97",
        "241738d48a768bdf2184e4a538796fddf9f995915482256d2d332eb4599c33cb",
    );
    const KNOWN_RECEIPT_MESSAGE_SHA256: &str =
        "bdacbbf82c493b7953e9775a28b7442fcd1769dddf4a57ad9bc6952024d536aa";
    const KNOWN_RECEIPTED_ID: &str =
        "50179e5216f46d2cdf3bf262893b018f438d6e85bb59c022e023fc69d349b469";
    const KNOWN_RECEIPTED_SIGNATURE: &str = concat!(
        "c5d69187e87a7699970781dfaccc8f0588582a35dc4833fe528d08f448146eea",
        "6af3df02bb584da05c11f2558415efff73c7acf3cf03eb8de59b34d154056387",
    );

    #[test]
    fn a_receipted_proof_has_the_known_encoding_id_and_signatures() {
        let signed = receipted(&other_identity(), data_proof());
        assert_eq!(
            hex::encode(Sha256::digest(receipt_message(&signed.proof).unwrap())),
            KNOWN_RECEIPT_MESSAGE_SHA256
        );
        assert_eq!(
            hex::encode(canonical_bytes(&signed.proof).unwrap()),
            KNOWN_RECEIPTED_ENCODING
        );
        assert_eq!(proof_id(&signed.proof).unwrap(), KNOWN_RECEIPTED_ID);
        assert_eq!(signed.signature, KNOWN_RECEIPTED_SIGNATURE);
        assert_eq!(check_signature(&signed), Ok(()));
        assert_eq!(check_receipt(&signed.proof), Ok(()));
        // The receipt block is the only difference from the same proof without one.
        let mut bare = signed.proof.clone();
        bare.receipt = None;
        assert_eq!(
            canonical_bytes(&signed.proof).unwrap().len() - canonical_bytes(&bare).unwrap().len(),
            1 + 16 + 33 + 64
        );
    }

    #[test]
    fn a_proof_without_a_valid_receipt_is_self_declared() {
        let receiver = other_identity();
        let bare = sign_proof(&identity(), data_proof()).unwrap();
        assert_eq!(check_receipt(&bare.proof), Err(Unreceipted::Missing));
        // The claimant cannot receipt its own work.
        let own = receipted(&identity(), data_proof());
        assert_eq!(check_signature(&own), Ok(()));
        assert_eq!(check_receipt(&own.proof), Err(Unreceipted::OwnReceipt));
        // A receipt for other counters does not carry over to inflated ones, even re-signed by
        // the claimant.
        let mut inflated = receipted(&receiver, data_proof()).proof;
        inflated.data_samples += 1;
        let inflated = sign_proof(&identity(), inflated).unwrap();
        assert_eq!(check_signature(&inflated), Ok(()));
        assert_eq!(
            check_receipt(&inflated.proof),
            Err(Unreceipted::BadSignature)
        );
        // A receipt naming another node than its key's.
        let mut foreign = receipted(&receiver, data_proof()).proof;
        let third = Identity::from_token(&format!("{:064x}", 3)).unwrap();
        foreign.receipt.as_mut().unwrap().node_id = third.node_id.clone();
        assert_eq!(
            check_receipt(&foreign),
            Err(Unreceipted::ForeignKey {
                claimed: third.node_id,
                actual: receiver.node_id.clone(),
            })
        );
        // A high-S twin of the receipt's signature is refused like a proof's.
        let mut high = receipted(&receiver, data_proof()).proof;
        let receipt = high.receipt.as_mut().unwrap();
        let low: [u8; 64] = hex::decode(&receipt.signature).unwrap().try_into().unwrap();
        receipt.signature = hex::encode(high_s_twin(&low));
        assert_eq!(check_receipt(&high), Err(Unreceipted::BadSignature));
    }

    #[test]
    fn tampering_the_receipt_breaks_the_claimants_signature() {
        let signed = receipted(&other_identity(), data_proof());
        let edits: [Edit<Receipt>; 3] = [
            ("node_id", |r| r.node_id = flip_first_hex(&r.node_id)),
            ("public_key", |r| {
                r.public_key = hex::encode(identity().public.serialize())
            }),
            ("signature", |r| r.signature = flip_first_hex(&r.signature)),
        ];
        for (field, edit) in edits {
            let mut tampered = signed.clone();
            edit(tampered.proof.receipt.as_mut().unwrap());
            assert_eq!(
                check_signature(&tampered),
                Err(ProofRejection::BadSignature),
                "receipt.{field}"
            );
        }
        let mut stripped = signed.clone();
        stripped.proof.receipt = None;
        assert_eq!(
            check_signature(&stripped),
            Err(ProofRejection::BadSignature)
        );
    }

    #[test]
    fn a_receipt_that_is_not_canonical_hex_is_malformed() {
        let signed = receipted(&other_identity(), data_proof());
        let edits: [Edit<Receipt>; 3] = [
            ("receipt.node_id", |r| r.node_id = r.node_id.to_uppercase()),
            ("receipt.public_key", |r| r.public_key.truncate(64)),
            ("receipt.signature", |r| r.signature.push_str("00")),
        ];
        for (field, edit) in edits {
            let mut bad = signed.proof.clone();
            edit(bad.receipt.as_mut().unwrap());
            assert!(malformed_field(&bad).contains(field), "{field}");
        }
    }

    #[test]
    fn a_receipt_round_trips_through_json_and_its_absence_adds_no_key() {
        let signed = receipted(&other_identity(), data_proof());
        let json = serde_json::to_value(&signed).unwrap();
        assert_eq!(json["receipt"]["node_id"], other_identity().node_id);
        let back: SignedProof = serde_json::from_value(json).unwrap();
        assert_eq!(back, signed);
        let bare = serde_json::to_value(signed_training_proof()).unwrap();
        assert!(bare.get("receipt").is_none(), "{bare}");
        let mut unknown = serde_json::to_value(&signed).unwrap();
        unknown["receipt"]["amount"] = 1.into();
        assert!(serde_json::from_value::<SignedProof>(unknown).is_err());
    }

    #[test]
    fn the_id_ignores_the_signature_and_tracks_every_field() {
        let signed = signed_training_proof();
        let mut resigned = signed.clone();
        resigned.signature = "00".repeat(64);
        assert_eq!(
            proof_id(&signed.proof).unwrap(),
            proof_id(&resigned.proof).unwrap()
        );
        let mut other = signed.proof.clone();
        other.nonce += 1;
        assert_ne!(proof_id(&signed.proof), proof_id(&other));
    }

    /// A named change to one field.
    pub(in crate::ledger) type Edit<T> = (&'static str, fn(&mut T));

    /// Each tampering changes one field of a signed proof (or its signature).
    pub(in crate::ledger) fn tamperings() -> Vec<Edit<SignedProof>> {
        vec![
            ("node_id", |s| {
                s.proof.node_id = flip_first_hex(&s.proof.node_id)
            }),
            ("public_key", |s| {
                s.proof.public_key = hex::encode(other_identity().public.serialize())
            }),
            ("kind", |s| s.proof.kind = ProofKind::Inference),
            ("timestamp_ms", |s| s.proof.timestamp_ms += 1),
            ("nonce", |s| s.proof.nonce += 1),
            ("epoch", |s| s.proof.epoch += 1),
            ("outer_round", |s| s.proof.outer_round += 1),
            ("work_seconds", |s| s.proof.work_seconds += 1),
            ("uptime_seconds", |s| s.proof.uptime_seconds -= 1),
            ("tokens", |s| s.proof.tokens += 1),
            ("batches", |s| s.proof.batches += 1),
            ("data_samples", |s| s.proof.data_samples += 1),
            ("request_id", |s| s.proof.request_id = "req-2".into()),
            ("model_hash_before", |s| {
                s.proof.model_hash_before = flip_first_hex(&s.proof.model_hash_before)
            }),
            ("model_hash_after", |s| {
                s.proof.model_hash_after = flip_first_hex(&s.proof.model_hash_after)
            }),
            ("model_hash_after emptied", |s| {
                s.proof.model_hash_after.clear()
            }),
            ("delta_hash", |s| {
                s.proof.delta_hash = flip_first_hex(&s.proof.delta_hash)
            }),
            ("loss", |s| {
                s.proof.loss = f32::from_bits(s.proof.loss.to_bits() + 1)
            }),
            ("signature", |s| s.signature = flip_first_hex(&s.signature)),
        ]
    }

    pub(in crate::ledger) fn flip_first_hex(value: &str) -> String {
        let replacement = if value.starts_with('0') { "1" } else { "0" };
        format!("{replacement}{}", &value[1..])
    }

    #[test]
    fn tampering_any_field_breaks_the_signature() {
        let signed = signed_training_proof();
        for (field, tamper) in tamperings() {
            let mut tampered = signed.clone();
            tamper(&mut tampered);
            assert_ne!(tampered, signed, "{field} did not change");
            assert_eq!(
                check_signature(&tampered),
                Err(ProofRejection::BadSignature),
                "{field}"
            );
        }
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let signed = signed_training_proof();
        let forged = sign_proof(&other_identity(), training_proof()).unwrap();
        let mut claimed = signed.clone();
        claimed.signature = forged.signature;
        assert_eq!(check_signature(&claimed), Err(ProofRejection::BadSignature));
    }

    #[test]
    fn a_matching_signature_by_a_foreign_key_is_refused() {
        let other = other_identity();
        let mut proof = training_proof();
        proof.node_id = identity().node_id;
        proof.public_key = hex::encode(other.public.serialize());
        let signature = hex::encode(other.sign(&canonical_bytes(&proof).unwrap()));
        let signed = SignedProof { proof, signature };
        assert_eq!(
            check_signature(&signed),
            Err(ProofRejection::ForeignKey {
                claimed: identity().node_id,
                actual: other.node_id,
            })
        );
    }

    /// n − s for a compact signature: the high-S twin that verifies mathematically.
    pub(in crate::ledger) fn high_s_twin(signature: &[u8; 64]) -> [u8; 64] {
        const ORDER: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xfe, 0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c,
            0xd0, 0x36, 0x41, 0x41,
        ];
        let mut twin = *signature;
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let difference = i16::from(ORDER[i]) - i16::from(signature[32 + i]) - borrow;
            borrow = i16::from(difference < 0);
            twin[32 + i] = difference.rem_euclid(256) as u8;
        }
        twin
    }

    #[test]
    fn a_high_s_signature_is_refused() {
        let mut signed = signed_training_proof();
        let low: [u8; 64] = hex::decode(&signed.signature).unwrap().try_into().unwrap();
        let high = high_s_twin(&low);
        // The twin is the same signature, only not in the one canonical (low-S) form.
        let mut normalized = secp256k1::ecdsa::Signature::from_compact(&high).unwrap();
        normalized.normalize_s();
        assert_eq!(normalized.serialize_compact(), low);
        signed.signature = hex::encode(high);
        assert_eq!(check_signature(&signed), Err(ProofRejection::BadSignature));
    }

    #[test]
    fn a_signature_that_is_not_64_lower_case_hex_bytes_is_refused() {
        let signed = signed_training_proof();
        for signature in [
            signed.signature.to_uppercase(),
            signed.signature[..126].to_string(),
            format!("{}00", signed.signature),
            String::new(),
        ] {
            let mut bad = signed.clone();
            bad.signature = signature;
            assert_eq!(check_signature(&bad), Err(ProofRejection::BadSignature));
        }
    }

    fn malformed_field(proof: &Proof) -> String {
        match canonical_bytes(proof) {
            Err(ProofRejection::Malformed(message)) => message,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn non_canonical_node_ids_are_malformed() {
        let proof = signed_training_proof().proof;
        for node_id in [
            proof.node_id.to_uppercase(),
            proof.node_id[..31].to_string(),
            format!("{}0", proof.node_id),
            format!("{}g", &proof.node_id[..31]),
            String::new(),
        ] {
            let mut bad = proof.clone();
            bad.node_id = node_id;
            assert!(malformed_field(&bad).contains("node_id"));
        }
    }

    #[test]
    fn non_canonical_public_keys_are_malformed() {
        let proof = signed_training_proof().proof;
        let not_on_curve = format!("05{}", &proof.public_key[2..]);
        let uncompressed = hex::encode(identity().public.serialize_uncompressed());
        for public_key in [
            proof.public_key.to_uppercase(),
            not_on_curve,
            uncompressed,
            proof.public_key[..64].to_string(),
        ] {
            let mut bad = proof.clone();
            bad.public_key = public_key;
            assert!(malformed_field(&bad).contains("public_key"));
        }
    }

    #[test]
    fn non_canonical_hashes_are_malformed() {
        let proof = signed_training_proof().proof;
        for value in [
            "AB".repeat(32),
            "ab".repeat(31),
            "ab".repeat(33),
            "zz".repeat(32),
        ] {
            for field in ["model_hash_before", "model_hash_after", "delta_hash"] {
                let mut bad = proof.clone();
                match field {
                    "model_hash_before" => bad.model_hash_before = value.clone(),
                    "model_hash_after" => bad.model_hash_after = value.clone(),
                    _ => bad.delta_hash = value.clone(),
                }
                assert!(malformed_field(&bad).contains(field), "{field} = {value}");
            }
        }
    }

    #[test]
    fn a_request_id_over_64_bytes_is_malformed() {
        let mut proof = signed_training_proof().proof;
        proof.request_id = "x".repeat(64);
        assert!(canonical_bytes(&proof).is_ok());
        proof.request_id = "é".repeat(33); // 66 bytes in 33 characters
        assert!(malformed_field(&proof).contains("request_id"));
        proof.request_id = "x".repeat(300); // would wrap a u8 length
        assert!(malformed_field(&proof).contains("request_id"));
    }

    #[test]
    fn a_non_finite_loss_is_malformed() {
        let mut proof = signed_training_proof().proof;
        for loss in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            proof.loss = loss;
            assert!(malformed_field(&proof).contains("loss"));
        }
    }

    #[test]
    fn signing_a_malformed_proof_is_an_error_not_a_panic() {
        let mut proof = training_proof();
        proof.delta_hash = "not hex".into();
        assert!(matches!(
            sign_proof(&identity(), proof),
            Err(ProofRejection::Malformed(message)) if message.contains("delta_hash")
        ));
    }

    #[test]
    fn empty_hashes_and_request_id_encode_as_absent() {
        let mut proof = signed_training_proof().proof;
        let full = canonical_bytes(&proof).unwrap();
        proof.request_id.clear();
        proof.model_hash_before.clear();
        proof.model_hash_after.clear();
        proof.delta_hash.clear();
        let empty = canonical_bytes(&proof).unwrap();
        assert_eq!(full.len() - empty.len(), "req-1".len() + 3 * 32);
        assert_eq!(&empty[empty.len() - 8..empty.len() - 4], &[0, 0, 0, 0]);
    }

    #[test]
    fn a_signed_proof_round_trips_through_json() {
        let signed = signed_training_proof();
        let json = serde_json::to_string(&signed).unwrap();
        let back: SignedProof = serde_json::from_str(&json).unwrap();
        assert_eq!(back, signed);
        assert_eq!(check_signature(&back), Ok(()));
    }
}
