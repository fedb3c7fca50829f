//! Gossip messages on the wire: a 64-byte ECDSA signature by the sender's wallet key, then a JSON
//! body. The signature covers a domain tag, the topic and the body, so a message cannot be replayed
//! on another topic or network. gossipsub's own strict signing already ties a message to its source
//! PeerId; ours makes the body verifiable on its own (stored, relayed, shown), with the same key.

use libp2p::PeerId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::admission::Certificate;
use crate::crypto::{self, Identity};
use crate::ledger::checkpoint::ConsensusWire;
use crate::ledger::witness::MAX_WITNESSED;
use crate::ledger::{ProofRejection, SignedProof, SignedTransaction, TxRejection};

/// Largest gossip message the node accepts; gossip carries only small messages (blobs go by
/// request-response).
pub const MAX_GOSSIP_BYTES: usize = 16 * 1024;
/// gossipsub's frame limit, above the application's so oversized messages reach validation and
/// are counted against the peer that sent them.
pub const GOSSIP_TRANSMIT_LIMIT: usize = 4 * MAX_GOSSIP_BYTES;
/// How far a message's timestamp may be from this node's clock.
pub const MAX_CLOCK_SKEW_MS: u64 = 120_000;
const SIGNATURE_BYTES: usize = 64;
const DOMAIN: &[u8] = b"neuroshard/gossip/v1";

/// Why a peer's message was refused. Counted per peer and shown on /api/peers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("oversized: {size} bytes, limit {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("bad signature")]
    BadSignature,
    #[error("sender's PeerId does not carry a secp256k1 key")]
    UnknownSigner,
    #[error("claims node_id {claimed}, but is signed by {actual}")]
    WrongNodeId { claimed: String, actual: String },
    #[error("stale: sent {skew_ms} ms away from this node's clock")]
    Stale { skew_ms: u64 },
    #[error("replayed: not newer than the last accepted message of this node")]
    Replayed,
    #[error("rate limited: more than {limit} messages in one heartbeat interval")]
    RateLimited { limit: u32 },
    #[error("banned peer")]
    Banned,
    #[error("bad membership certificate: {0}")]
    BadCertificate(String),
    #[error("proof refused: {0}")]
    Proof(#[from] ProofRejection),
    #[error("transaction refused: {0}")]
    Transaction(#[from] TxRejection),
}

impl Rejection {
    /// A short name per kind, for counting (/api/peers `rejections`).
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Oversized { .. } => "oversized",
            Rejection::Malformed(_) => "malformed",
            Rejection::BadSignature => "bad_signature",
            Rejection::UnknownSigner => "unknown_signer",
            Rejection::WrongNodeId { .. } => "wrong_node_id",
            Rejection::Stale { .. } => "stale",
            Rejection::Replayed => "replayed",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::Banned => "banned",
            Rejection::BadCertificate(_) => "bad_certificate",
            Rejection::Proof(r) => r.kind(),
            Rejection::Transaction(r) => r.kind(),
        }
    }
}

/// The ledger topic's messages: a node gossips its own proofs and transactions (each also signed
/// on its own, so it can be stored and re-verified anywhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerMessage {
    Proof(SignedProof),
    Transaction(SignedTransaction),
    /// What the sender's aggregation of a round kept: lets a node that missed (part of) that
    /// round settle the training proofs of it, once it holds the θ₀ that aggregate produced.
    Verdicts(RoundVerdictsWire),
    /// The sender's own recent proofs and transactions again, so peers that were not connected
    /// (or not yet subscribed) when one was first gossiped still get it; known ones are no-ops.
    Recent {
        proofs: Vec<SignedProof>,
        transactions: Vec<SignedTransaction>,
    },
    /// The sender heard each of these uptime proofs' claimants live over the interval the proof
    /// claims (`ledger::witness::saw`); the gossip signature makes it the sender's signed
    /// statement. At most `MAX_WITNESSED` proof ids.
    Witnessed {
        proofs: Vec<String>,
    },
    /// A proposal or vote of the checkpoint consensus (`ledger::checkpoint`), gossiped by the
    /// validator that signed it.
    Checkpoint(ConsensusWire),
}

/// A round's verdicts as gossiped; `theta0_after` is the BLAKE3 hash of the θ₀ they produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundVerdictsWire {
    pub round: u64,
    pub theta0_after: String,
    /// (node_id, delta_hash, kept)
    pub verdicts: Vec<(String, String, bool)>,
}

impl LedgerMessage {
    /// What the gate checks before the ledger sees a message: only a proof's or transaction's
    /// own signer may gossip it (anyone else sending it is replaying someone else's work), and a
    /// witness statement names at most `MAX_WITNESSED` proof ids.
    pub fn check(&self, signer_node_id: &str) -> Result<(), Rejection> {
        let owned = |owner: &str, nonce: u64| {
            if owner == signer_node_id {
                Ok(())
            } else {
                Err(Rejection::from(ProofRejection::Replay { nonce }))
            }
        };
        match self {
            LedgerMessage::Proof(p) => owned(&p.proof.node_id, p.proof.nonce),
            LedgerMessage::Transaction(t) => owned(&t.tx.from, t.tx.seq),
            LedgerMessage::Recent {
                proofs,
                transactions,
            } => proofs
                .iter()
                .map(|p| (&p.proof.node_id, p.proof.nonce))
                .chain(transactions.iter().map(|t| (&t.tx.from, t.tx.seq)))
                .try_for_each(|(owner, nonce)| owned(owner, nonce)),
            // Verdicts and witness statements are the sender's own by construction (the gossip
            // signature names it).
            LedgerMessage::Verdicts(_) => Ok(()),
            LedgerMessage::Witnessed { proofs } if proofs.len() > MAX_WITNESSED => {
                Err(Rejection::Malformed(format!(
                    "{} proof ids witnessed in one message, limit {MAX_WITNESSED}",
                    proofs.len()
                )))
            }
            LedgerMessage::Witnessed { proofs } if !proofs.iter().all(|id| is_hex_hash(id)) => Err(
                Rejection::Malformed("a witnessed proof id is not 64 hex characters".into()),
            ),
            LedgerMessage::Witnessed { .. } => Ok(()),
            // Only a validator sends its own votes: a relayed copy travels as gossip does, under
            // its first sender's signature.
            LedgerMessage::Checkpoint(message) if message.validator != signer_node_id => {
                Err(Rejection::WrongNodeId {
                    claimed: message.validator.chars().take(64).collect(),
                    actual: signer_node_id.to_string(),
                })
            }
            LedgerMessage::Checkpoint(_) => Ok(()),
        }
    }
}

/// What every node gossips each heartbeat interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub node_id: String,
    /// "trainer" or "observer".
    pub role: String,
    pub global_step: u64,
    pub outer_round: u64,
    /// BLAKE3 of θ₀ (little-endian f32 bytes), hex: peers on the same θ₀ agree on it.
    pub theta0_hash: String,
    /// Blob id of the outer momentum, which a healing node fetches with θ₀.
    pub momentum_hash: String,
    pub tokens_per_sec: f64,
    /// Sender's clock, unix milliseconds.
    pub sent_at_ms: u64,
    /// The sender's membership certificate in a permissioned network (a few hundred bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<Certificate>,
}

const ROLES: [&str; 2] = ["trainer", "observer"];

impl Heartbeat {
    /// Field checks beyond the JSON shape: the node_id is the signer's, values are plausible.
    pub fn check(&self, signer_node_id: &str, now_ms: u64) -> Result<(), Rejection> {
        if self.node_id != signer_node_id {
            return Err(Rejection::WrongNodeId {
                claimed: self.node_id.chars().take(64).collect(),
                actual: signer_node_id.to_string(),
            });
        }
        if !ROLES.contains(&self.role.as_str()) {
            return Err(Rejection::Malformed(format!(
                "unknown role {:?}",
                self.role.chars().take(32).collect::<String>()
            )));
        }
        if !is_hex_hash(&self.theta0_hash) || !is_hex_hash(&self.momentum_hash) {
            return Err(Rejection::Malformed(
                "theta0_hash and momentum_hash must be 64 hex characters".into(),
            ));
        }
        if !(self.tokens_per_sec.is_finite() && self.tokens_per_sec >= 0.0) {
            return Err(Rejection::Malformed(
                "tokens_per_sec is not a finite non-negative number".into(),
            ));
        }
        let skew_ms = now_ms.abs_diff(self.sent_at_ms);
        if skew_ms > MAX_CLOCK_SKEW_MS {
            return Err(Rejection::Stale { skew_ms });
        }
        Ok(())
    }
}

/// A node's contribution to a DiLoCo round, announced on the round topic; the delta itself is a
/// blob fetched by `delta_hash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundAnnouncement {
    pub node_id: String,
    pub round: u64,
    /// The θ₀ the delta was computed from: only deltas from the same θ₀ are combined.
    pub theta0_hash: String,
    /// Blob id (BLAKE3) of the encoded delta.
    pub delta_hash: String,
    /// Size of the encoded delta in bytes.
    pub delta_bytes: u64,
    /// How the delta is encoded (fp32, fp16, int8, top_k).
    pub codec: String,
    /// Tokens the node processed in the round (the mean weights by them).
    pub tokens: u64,
    pub sent_at_ms: u64,
    /// In a sharded round, the slices this node aggregated: added to its re-announcements once
    /// its reports are served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<SliceClaim>,
}

/// Most claims one announcement carries (an aggregator reports r slices).
pub const MAX_CLAIMS: usize = 16;

/// "I aggregated `slice` of the shard plan `plan`; my report is blob `result`."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceClaim {
    /// `ShardPlan::id`, hex.
    pub plan: String,
    pub slice: u32,
    /// Blob id of the report (`shard::encode_report`), hex.
    pub result: String,
    pub result_bytes: u64,
}

fn is_hex_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

impl RoundAnnouncement {
    /// Field checks: signed by the node it names, plausible values, fresh.
    pub fn check(
        &self,
        signer_node_id: &str,
        max_delta_bytes: u64,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        if self.node_id != signer_node_id {
            return Err(Rejection::WrongNodeId {
                claimed: self.node_id.chars().take(64).collect(),
                actual: signer_node_id.to_string(),
            });
        }
        if !is_hex_hash(&self.theta0_hash) || !is_hex_hash(&self.delta_hash) {
            return Err(Rejection::Malformed(
                "theta0_hash and delta_hash must be 64 hex characters".into(),
            ));
        }
        if self.delta_bytes == 0 || self.delta_bytes > max_delta_bytes {
            return Err(Rejection::Malformed(format!(
                "delta of {} bytes is outside 1..={max_delta_bytes}",
                self.delta_bytes
            )));
        }
        if self.codec.len() > 16 {
            return Err(Rejection::Malformed("codec name too long".into()));
        }
        if self.claims.len() > MAX_CLAIMS {
            return Err(Rejection::Malformed(format!(
                "{} slice claims, limit {MAX_CLAIMS}",
                self.claims.len()
            )));
        }
        for claim in &self.claims {
            if !is_hex_hash(&claim.plan) || !is_hex_hash(&claim.result) {
                return Err(Rejection::Malformed(
                    "a claim's plan and result must be 64 hex characters".into(),
                ));
            }
            if claim.result_bytes == 0 || claim.result_bytes > max_delta_bytes {
                return Err(Rejection::Malformed(format!(
                    "a report of {} bytes is outside 1..={max_delta_bytes}",
                    claim.result_bytes
                )));
            }
        }
        let skew_ms = now_ms.abs_diff(self.sent_at_ms);
        if skew_ms > MAX_CLOCK_SKEW_MS {
            return Err(Rejection::Stale { skew_ms });
        }
        Ok(())
    }
}

/// This node's clock in unix milliseconds: what `sent_at_ms` fields carry and are checked against.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn signed_bytes(topic: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + topic.len() + body.len() + 2);
    bytes.extend_from_slice(DOMAIN);
    bytes.push(0);
    bytes.extend_from_slice(topic.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(body);
    bytes
}

/// A message for `topic`, signed by `identity`.
pub fn seal(identity: &Identity, topic: &str, body: &impl Serialize) -> Vec<u8> {
    let body = serde_json::to_vec(body).expect("message types serialize");
    seal_bytes(identity, topic, &body)
}

/// Signs raw body bytes; [`seal`] is the typed form.
pub fn seal_bytes(identity: &Identity, topic: &str, body: &[u8]) -> Vec<u8> {
    let mut message = identity.sign(&signed_bytes(topic, body)).to_vec();
    message.extend_from_slice(body);
    message
}

/// Checks size and signature against the sender's key and parses the body. Returns the body and
/// the sender's node_id.
pub fn open<T: DeserializeOwned>(
    topic: &str,
    data: &[u8],
    sender: &PeerId,
) -> Result<(T, String), Rejection> {
    if data.len() > MAX_GOSSIP_BYTES {
        return Err(Rejection::Oversized {
            size: data.len(),
            limit: MAX_GOSSIP_BYTES,
        });
    }
    if data.len() < SIGNATURE_BYTES {
        return Err(Rejection::Malformed(format!(
            "{} bytes is shorter than a signature",
            data.len()
        )));
    }
    let key = crypto::public_key_of(sender).ok_or(Rejection::UnknownSigner)?;
    let (signature, body) = data.split_at(SIGNATURE_BYTES);
    if !crypto::verify(&key, &signed_bytes(topic, body), signature) {
        return Err(Rejection::BadSignature);
    }
    let value = serde_json::from_slice(body).map_err(|e| Rejection::Malformed(e.to_string()))?;
    Ok((value, crypto::node_id_of(&key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::generate_token;

    const TOPIC: &str = "neuroshard/test/heartbeat/1";

    /// What the PeerActor does with a heartbeat: open (signature), then check the fields.
    fn open_heartbeat(
        topic: &str,
        data: &[u8],
        sender: &PeerId,
        now_ms: u64,
    ) -> Result<Heartbeat, Rejection> {
        let (heartbeat, node_id): (Heartbeat, String) = open(topic, data, sender)?;
        heartbeat.check(&node_id, now_ms)?;
        Ok(heartbeat)
    }
    const NOW: u64 = 1_800_000_000_000;

    fn identity() -> Identity {
        Identity::from_token(&generate_token()).unwrap()
    }

    fn heartbeat(id: &Identity) -> Heartbeat {
        Heartbeat {
            node_id: id.node_id.clone(),
            role: "trainer".into(),
            global_step: 120,
            outer_round: 3,
            theta0_hash: "ab".repeat(32),
            momentum_hash: "cd".repeat(32),
            tokens_per_sec: 1500.0,
            sent_at_ms: NOW - 40,
            membership: None,
        }
    }

    #[test]
    fn a_sealed_heartbeat_opens_for_its_sender() {
        let id = identity();
        let data = seal(&id, TOPIC, &heartbeat(&id));
        assert_eq!(
            open_heartbeat(TOPIC, &data, &id.peer_id(), NOW),
            Ok(heartbeat(&id))
        );
    }

    #[test]
    fn another_sender_topic_or_flipped_byte_breaks_the_signature() {
        let id = identity();
        let data = seal(&id, TOPIC, &heartbeat(&id));
        let other = identity();
        assert_eq!(
            open_heartbeat(TOPIC, &data, &other.peer_id(), NOW),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            open_heartbeat("neuroshard/other/heartbeat/1", &data, &id.peer_id(), NOW),
            Err(Rejection::BadSignature)
        );
        let mut flipped = data.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            open_heartbeat(TOPIC, &flipped, &id.peer_id(), NOW),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn a_heartbeat_carries_a_certificate_well_within_the_gossip_limit() {
        use crate::admission::{Certificate, Genesis, Policy, verify};
        let (id, authorities) = (identity(), [identity(), identity(), identity()]);
        let keys: Vec<_> = authorities.iter().map(|a| a.public).collect();
        let genesis = Genesis::new(
            "permnet",
            "nano",
            Policy::Permissioned,
            &keys,
            3,
            Default::default(),
            1,
        )
        .unwrap();
        let now_s = NOW / 1000;
        let mut cert = Certificate::unsigned(
            &genesis,
            &id.node_id,
            vec!["trainer".into()],
            now_s,
            now_s + 60,
        );
        for authority in &authorities {
            cert.sign(authority);
        }
        let plain = seal(&id, TOPIC, &heartbeat(&id));
        let with = Heartbeat {
            membership: Some(cert.clone()),
            ..heartbeat(&id)
        };
        let data = seal(&id, TOPIC, &with);
        // Three signatures: about 220 bytes each on top of ~300 for the rest.
        assert!(data.len() - plain.len() < 1024, "{} bytes", data.len());
        assert!(data.len() < MAX_GOSSIP_BYTES / 8);
        let opened = open_heartbeat(TOPIC, &data, &id.peer_id(), NOW).unwrap();
        assert_eq!(opened.membership.as_ref(), Some(&cert));
        assert_eq!(verify(now_s, &genesis, &cert, &id.node_id), Ok(()));
        // Without a certificate the field is left out: the wire format is unchanged.
        assert!(!String::from_utf8_lossy(&plain).contains("membership"));
    }

    #[test]
    fn a_heartbeat_naming_another_node_is_refused() {
        let (id, other) = (identity(), identity());
        let data = seal(&id, TOPIC, &heartbeat(&other));
        assert!(matches!(
            open_heartbeat(TOPIC, &data, &id.peer_id(), NOW),
            Err(Rejection::WrongNodeId { .. })
        ));
    }

    #[test]
    fn malformed_oversized_stale_and_implausible_messages_are_refused() {
        let id = identity();
        let peer = id.peer_id();
        assert!(matches!(
            open_heartbeat(TOPIC, b"short", &peer, NOW),
            Err(Rejection::Malformed(_))
        ));
        let garbage = seal_bytes(&id, TOPIC, b"{not json");
        assert!(matches!(
            open_heartbeat(TOPIC, &garbage, &peer, NOW),
            Err(Rejection::Malformed(_))
        ));
        let big = vec![b' '; MAX_GOSSIP_BYTES + 1];
        assert!(matches!(
            open_heartbeat(TOPIC, &big, &peer, NOW),
            Err(Rejection::Oversized { .. })
        ));
        let mut old = heartbeat(&id);
        old.sent_at_ms = NOW - MAX_CLOCK_SKEW_MS - 1;
        assert!(matches!(
            open_heartbeat(TOPIC, &seal(&id, TOPIC, &old), &peer, NOW),
            Err(Rejection::Stale { .. })
        ));
        let mut nan = heartbeat(&id);
        nan.tokens_per_sec = -1.0;
        assert!(matches!(
            open_heartbeat(TOPIC, &seal(&id, TOPIC, &nan), &peer, NOW),
            Err(Rejection::Malformed(_))
        ));
        let mut role = heartbeat(&id);
        role.role = "king".into();
        assert!(matches!(
            open_heartbeat(TOPIC, &seal(&id, TOPIC, &role), &peer, NOW),
            Err(Rejection::Malformed(_))
        ));
    }

    fn signed_proof(id: &Identity, nonce: u64) -> SignedProof {
        let proof = crate::ledger::Proof {
            nonce,
            timestamp_ms: 1,
            work_seconds: 60,
            uptime_seconds: 60,
            ..crate::ledger::Proof::empty(crate::ledger::ProofKind::Uptime)
        };
        crate::ledger::proof::sign_proof(id, proof).unwrap()
    }

    #[test]
    fn only_the_signer_of_a_proof_may_gossip_it() {
        let (alice, bob) = (identity(), identity());
        let own = LedgerMessage::Proof(signed_proof(&alice, 1));
        assert_eq!(own.check(&alice.node_id), Ok(()));
        let replayed = own.check(&bob.node_id).unwrap_err();
        assert_eq!(replayed.kind(), "replay");
        // One foreign proof spoils a bundle of recent ones.
        let bundle = LedgerMessage::Recent {
            proofs: vec![signed_proof(&alice, 2), signed_proof(&bob, 3)],
            transactions: Vec::new(),
        };
        assert_eq!(bundle.check(&alice.node_id).unwrap_err().kind(), "replay");
        let verdicts = LedgerMessage::Verdicts(RoundVerdictsWire {
            round: 1,
            theta0_after: String::new(),
            verdicts: Vec::new(),
        });
        assert_eq!(verdicts.check(&bob.node_id), Ok(()));
    }

    #[test]
    fn a_witness_statement_is_bounded_and_names_proof_ids() {
        let id = "ab".repeat(32);
        let witnessed = |proofs: Vec<String>| LedgerMessage::Witnessed { proofs }.check("any");
        assert_eq!(witnessed(vec![id.clone(); MAX_WITNESSED]), Ok(()));
        assert!(matches!(
            witnessed(vec![id; MAX_WITNESSED + 1]),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            witnessed(vec!["not an id".into()]),
            Err(Rejection::Malformed(_))
        ));
    }
}
