//! Admission: who counts in a network. A network is defined by a **genesis** file every node of it
//! loads (network id, model preset and hash, reward schedule, admission policy, authority keys); in
//! a `permissioned` network, k of the genesis's m authority keys sign **membership certificates**
//! (node_id, roles, expiry) that peers present in their heartbeats. Pure: files are parsed and
//! checked here, the clock is an argument; see ARCHITECTURE.md ("Admission") for where each check
//! runs.

use std::collections::BTreeSet;
use std::path::Path;

use secp256k1::PublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{self, Identity};
use crate::ledger::rewards::RewardSchedule;
use crate::model::NeuroLlmConfig;
use crate::model::config::PRESETS;
use crate::net::protocol::valid_network_id;

/// Domain tag of a certificate's signed bytes: a certificate signature can never pass for any
/// other signed message of the node (gossip, proofs, tracker announcements).
pub const CERTIFICATE_DOMAIN: &[u8] = b"neuroshard/membership/v1";
/// Domain tag of the bytes a genesis is hashed over.
pub const GENESIS_DOMAIN: &[u8] = b"neuroshard/genesis/v1";
/// Most authority keys a genesis may name (and so most signatures a certificate carries): keeps a
/// certificate a few hundred bytes to a few KiB inside a heartbeat.
pub const MAX_AUTHORITIES: usize = 16;
/// Roles a certificate may grant.
pub const ROLES: &[&str] = &["trainer"];
/// How far ahead of this node's clock a certificate's `issued_at_s` may be.
pub const MAX_CLOCK_SKEW_S: u64 = 120;
/// Length of the genesis hash prefix that names the network in protocol names.
pub const SHORT_HASH_LEN: usize = 16;

/// How a network decides who counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Authority keys sign membership certificates; only certified nodes' work counts.
    Permissioned,
    /// Anyone may join; weight must come from what an identity cannot mint for free.
    Open,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Permissioned => "permissioned",
            Policy::Open => "open",
        }
    }

    /// `permissioned` | `open`, as the CLI takes it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "permissioned" => Some(Policy::Permissioned),
            "open" => Some(Policy::Open),
            _ => None,
        }
    }
}

/// The genesis file: what defines one network. Every node of the network loads the same one; its
/// hash names the network on the wire, so nodes of different geneses never meet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    pub network_id: String,
    /// Model preset name (nano | micro | bootstrap).
    pub preset: String,
    /// `model::config` hash of the preset: a preset whose shape changed is another model.
    pub model_hash: String,
    /// The ledger's reward schedule (`[ledger.rewards]`), in NEURO.
    pub rewards: RewardSchedule,
    pub policy: Policy,
    /// Compressed secp256k1 public keys (66 hex characters) that sign membership certificates.
    pub authorities: Vec<String>,
    /// k: distinct authority signatures a certificate needs (k of the m authorities).
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// Unix seconds.
    pub created_at_s: u64,
}

fn default_threshold() -> u32 {
    1
}

/// A problem with a genesis or certificate file: the file, the field and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: field `{field}`: {reason}")]
pub struct FileError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

/// A field-level problem, before the file name is known.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn in_file(self, file: &Path) -> FileError {
        FileError {
            file: file.display().to_string(),
            field: self.field,
            reason: self.reason,
        }
    }
}

/// Canonical byte encoding: every field in a fixed order, strings and lists length-prefixed
/// (u32 big-endian), integers big-endian, floats as their IEEE-754 bits, so no two values encode
/// alike and any implementation can reproduce it.
#[derive(Default)]
struct Canonical(Vec<u8>);

impl Canonical {
    fn new(domain: &[u8]) -> Self {
        let mut c = Self::default();
        c.bytes(domain);
        c
    }
    fn bytes(&mut self, bytes: &[u8]) {
        self.0
            .extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.0.extend_from_slice(bytes);
    }
    fn str(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
    fn f64(&mut self, value: f64) {
        self.u64(value.to_bits());
    }
    fn strs(&mut self, items: &[String]) {
        self.u64(items.len() as u64);
        for item in items {
            self.str(item);
        }
    }
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A compressed secp256k1 public key from 66 hex characters.
pub fn parse_public_key(hex_key: &str) -> Result<PublicKey, String> {
    if !is_hex(hex_key, 66) {
        return Err(format!(
            "{:?} is not a compressed secp256k1 public key (66 hex characters)",
            hex_key.chars().take(80).collect::<String>()
        ));
    }
    let bytes = hex::decode(hex_key).map_err(|e| e.to_string())?;
    PublicKey::from_slice(&bytes).map_err(|e| format!("{hex_key}: not a curve point: {e}"))
}

/// A node_id: 32 lower-case hex characters (what `neuroshard id` prints).
pub fn valid_node_id(node_id: &str) -> bool {
    is_hex(node_id, 32) && !node_id.bytes().any(|b| b.is_ascii_uppercase())
}

impl Genesis {
    const FIELDS: &[&str] = &[
        "network_id",
        "preset",
        "model_hash",
        "rewards",
        "policy",
        "authorities",
        "threshold",
        "created_at_s",
    ];

    /// A new genesis for `preset` signed for by `authorities`, created at `created_at_s`.
    pub fn new(
        network_id: &str,
        preset: &str,
        policy: Policy,
        authorities: &[PublicKey],
        threshold: u32,
        rewards: RewardSchedule,
        created_at_s: u64,
    ) -> Result<Self, FieldError> {
        let model = NeuroLlmConfig::preset(preset).ok_or_else(|| {
            FieldError::new(
                "preset",
                format!(
                    "unknown preset {preset:?} (expected {})",
                    PRESETS.join(", ")
                ),
            )
        })?;
        let genesis = Self {
            network_id: network_id.into(),
            preset: preset.into(),
            model_hash: model.hash_hex(),
            rewards,
            policy,
            authorities: authorities
                .iter()
                .map(|k| hex::encode(k.serialize()))
                .collect(),
            threshold,
            created_at_s,
        };
        genesis.validate()?;
        Ok(genesis)
    }

    /// Reads and checks a genesis file; the error names the file and the field.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        Self::from_json(
            &std::fs::read_to_string(path)
                .map_err(|e| FieldError::new("-", format!("cannot read: {e}")).in_file(path))?,
        )
        .map_err(|e| e.in_file(path))
    }

    /// Parses and checks a genesis document; the error names the field.
    pub fn from_json(text: &str) -> Result<Self, FieldError> {
        let genesis: Self = decode(text, Self::FIELDS, &["threshold"])?;
        genesis.validate()?;
        Ok(genesis)
    }

    /// Every field is plausible and consistent: a known preset with its hash, a valid schedule,
    /// distinct parseable authority keys, 1 ≤ k ≤ m, and a permissioned network has authorities.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !valid_network_id(&self.network_id) {
            return Err(FieldError::new(
                "network_id",
                format!(
                    "{:?} is not 1 to 64 characters of A-Z a-z 0-9 . _ -",
                    self.network_id
                ),
            ));
        }
        let Some(model) = NeuroLlmConfig::preset(&self.preset) else {
            return Err(FieldError::new(
                "preset",
                format!(
                    "unknown preset {:?} (expected one of {})",
                    self.preset,
                    PRESETS.join(", ")
                ),
            ));
        };
        if self.model_hash != model.hash_hex() {
            return Err(FieldError::new(
                "model_hash",
                format!(
                    "{:?} is not the hash of preset {:?} ({}): this build trains another model",
                    self.model_hash,
                    self.preset,
                    model.hash_hex()
                ),
            ));
        }
        self.rewards
            .validate()
            .map_err(|r| FieldError::new("rewards", r))?;
        if self.authorities.len() > MAX_AUTHORITIES {
            return Err(FieldError::new(
                "authorities",
                format!("{} keys; at most {MAX_AUTHORITIES}", self.authorities.len()),
            ));
        }
        if self.policy == Policy::Permissioned && self.authorities.is_empty() {
            return Err(FieldError::new(
                "authorities",
                "a permissioned network needs at least one authority key",
            ));
        }
        let mut seen = BTreeSet::new();
        for key in &self.authorities {
            parse_public_key(key).map_err(|r| FieldError::new("authorities", r))?;
            if !seen.insert(key.to_ascii_lowercase()) {
                return Err(FieldError::new(
                    "authorities",
                    format!("{key} is listed twice"),
                ));
            }
        }
        let m = self.authorities.len().max(1) as u32;
        if !(1..=m).contains(&self.threshold) {
            return Err(FieldError::new(
                "threshold",
                format!(
                    "{} is not in 1..={m} (the number of authority keys)",
                    self.threshold
                ),
            ));
        }
        if self.created_at_s == 0 {
            return Err(FieldError::new(
                "created_at_s",
                "must be a unix time in seconds",
            ));
        }
        Ok(())
    }

    /// The bytes the hash covers, every field in a fixed order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canonical::new(GENESIS_DOMAIN);
        c.str(&self.network_id);
        c.str(&self.preset);
        c.str(&self.model_hash);
        let r = &self.rewards;
        for rate in [
            r.uptime_per_minute,
            r.training_per_batch,
            r.data_per_sample,
            r.inference_per_million_tokens,
            r.max_per_proof,
        ] {
            c.f64(rate);
        }
        c.str(self.policy.as_str());
        let keys: Vec<String> = self
            .authorities
            .iter()
            .map(|k| k.to_ascii_lowercase())
            .collect();
        c.strs(&keys);
        c.u64(self.threshold.into());
        c.u64(self.created_at_s);
        c.0
    }

    /// SHA-256 of the canonical bytes, hex: the network's identity.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_bytes()))
    }

    /// The first 16 hex characters of the hash, as protocol names carry it.
    pub fn short_hash(&self) -> String {
        self.hash()[..SHORT_HASH_LEN].to_string()
    }

    /// Whether `public` is one of this network's authorities.
    pub fn is_authority(&self, public: &PublicKey) -> bool {
        let ours = hex::encode(public.serialize());
        self.authorities
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&ours))
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a genesis serializes")
    }
}

/// Decodes `text` as `T`, naming the field of the first problem: unknown keys, missing keys (other
/// than `optional`) and wrongly typed values each name their key.
fn decode<T: serde::de::DeserializeOwned>(
    text: &str,
    fields: &[&str],
    optional: &[&str],
) -> Result<T, FieldError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| FieldError::new("-", format!("not JSON: {e}")))?;
    let serde_json::Value::Object(map) = &value else {
        return Err(FieldError::new("-", "not a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(FieldError::new(
            unknown,
            format!("unknown field (expected {})", fields.join(", ")),
        ));
    }
    if let Some(missing) = fields
        .iter()
        .find(|f| !optional.contains(f) && !map.contains_key(**f))
    {
        return Err(FieldError::new(missing, "missing"));
    }
    serde_json::from_value(value.clone()).map_err(|e| {
        // A wrongly typed value: serde's message names the line, not the key. The culprit is the
        // field whose removal leaves only its own absence to complain about.
        let field = fields
            .iter()
            .find(|f| {
                let mut without = map.clone();
                if without.remove(**f).is_none() {
                    return false;
                }
                let error = serde_json::from_value::<T>(serde_json::Value::Object(without))
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                // Without the culprit, the only complaint left is the field being missing.
                error.contains(&format!("missing field `{f}`")) || error.is_empty()
            })
            .copied()
            .unwrap_or("-");
        FieldError::new(field, e.to_string())
    })
}

/// One authority's signature on a certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthoritySignature {
    /// The authority's compressed public key, 66 hex characters.
    pub authority: String,
    /// ECDSA secp256k1 over SHA-256 of the certificate's signed bytes: 64 compact bytes, hex.
    pub signature: String,
}

/// A membership certificate: k of the genesis's authorities say that `node_id` belongs to the
/// network in `roles` until `expires_at_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub network_id: String,
    /// SHA-256 of the genesis (hex), see [`Genesis::hash`].
    pub genesis_hash: String,
    pub node_id: String,
    pub roles: Vec<String>,
    pub issued_at_s: u64,
    pub expires_at_s: u64,
    pub signatures: Vec<AuthoritySignature>,
}

/// Why a certificate does not admit a node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CertError {
    #[error("issued under genesis {got}, this network's genesis is {expected}")]
    WrongGenesis { expected: String, got: String },
    #[error("issued for network {got:?}, this network is {expected:?}")]
    WrongNetwork { expected: String, got: String },
    #[error("issued to node {got}, presented for node {expected}")]
    WrongNode { expected: String, got: String },
    #[error("expired at unix time {expired_at_s} (now {now_s})")]
    Expired { expired_at_s: u64, now_s: u64 },
    #[error("not valid before unix time {issued_at_s} (now {now_s})")]
    NotYetValid { issued_at_s: u64, now_s: u64 },
    #[error("unknown role {0:?} (known: trainer)")]
    UnknownRole(String),
    #[error("signed by {0}, which is not an authority of this genesis")]
    UnknownAuthority(String),
    #[error("authority {0} signed twice")]
    DuplicateSignature(String),
    #[error("the signature of authority {0} does not verify")]
    BadSignature(String),
    #[error("{valid} valid authority signature(s), the genesis requires {threshold}")]
    BelowThreshold { valid: usize, threshold: u32 },
    #[error("malformed: {0}")]
    Malformed(String),
}

impl CertError {
    /// Whether presenting this certificate is an offence (forged, altered, someone else's), as
    /// opposed to one that merely does not admit now (expired, not yet valid): an honest node
    /// whose certificate ran out is unadmitted, never punished.
    pub fn is_offence(&self) -> bool {
        !matches!(
            self,
            CertError::Expired { .. } | CertError::NotYetValid { .. }
        )
    }
}

impl Certificate {
    const FIELDS: &[&str] = &[
        "network_id",
        "genesis_hash",
        "node_id",
        "roles",
        "issued_at_s",
        "expires_at_s",
        "signatures",
    ];

    /// An unsigned certificate for `node_id` under `genesis`.
    pub fn unsigned(
        genesis: &Genesis,
        node_id: &str,
        roles: Vec<String>,
        issued_at_s: u64,
        expires_at_s: u64,
    ) -> Self {
        Self {
            network_id: genesis.network_id.clone(),
            genesis_hash: genesis.hash(),
            node_id: node_id.to_string(),
            roles,
            issued_at_s,
            expires_at_s,
            signatures: Vec::new(),
        }
    }

    /// What the authorities sign: the domain tag and every field but the signatures.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut c = Canonical::new(CERTIFICATE_DOMAIN);
        c.str(&self.network_id);
        c.str(&self.genesis_hash);
        c.str(&self.node_id);
        c.strs(&self.roles);
        c.u64(self.issued_at_s);
        c.u64(self.expires_at_s);
        c.0
    }

    /// Adds (or replaces) `authority`'s signature.
    pub fn sign(&mut self, authority: &Identity) {
        let key = hex::encode(authority.public.serialize());
        let signature = hex::encode(authority.sign(&self.signed_bytes()));
        self.signatures
            .retain(|s| !s.authority.eq_ignore_ascii_case(&key));
        self.signatures.push(AuthoritySignature {
            authority: key,
            signature,
        });
    }

    /// Reads a certificate file (JSON); the error names the file and the field.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FieldError::new("-", format!("cannot read: {e}")).in_file(path))?;
        Self::from_json(&text).map_err(|e| e.in_file(path))
    }

    pub fn from_json(text: &str) -> Result<Self, FieldError> {
        decode(text, Self::FIELDS, &[])
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a certificate serializes")
    }

    /// Everything that does not depend on the clock or on who presents it: shape, genesis,
    /// network, roles, and at least k distinct valid authority signatures. Peers cache this result
    /// by the certificate's bytes; [`verify`] adds the node and the clock.
    pub fn check_signatures(&self, genesis: &Genesis) -> Result<(), CertError> {
        self.check_shape()?;
        let expected = genesis.hash();
        if self.genesis_hash != expected {
            return Err(CertError::WrongGenesis {
                expected,
                got: self.genesis_hash.clone(),
            });
        }
        if self.network_id != genesis.network_id {
            return Err(CertError::WrongNetwork {
                expected: genesis.network_id.clone(),
                got: self.network_id.clone(),
            });
        }
        let message = self.signed_bytes();
        let mut signers = BTreeSet::new();
        for s in &self.signatures {
            let key = parse_public_key(&s.authority).map_err(CertError::Malformed)?;
            let canonical = hex::encode(key.serialize());
            if !genesis.is_authority(&key) {
                return Err(CertError::UnknownAuthority(canonical));
            }
            if !signers.insert(canonical.clone()) {
                return Err(CertError::DuplicateSignature(canonical));
            }
            let valid = is_hex(&s.signature, 128)
                && hex::decode(&s.signature)
                    .is_ok_and(|bytes| crypto::verify(&key, &message, &bytes));
            if !valid {
                return Err(CertError::BadSignature(canonical));
            }
        }
        if signers.len() < genesis.threshold as usize {
            return Err(CertError::BelowThreshold {
                valid: signers.len(),
                threshold: genesis.threshold,
            });
        }
        Ok(())
    }

    fn check_shape(&self) -> Result<(), CertError> {
        let malformed = |why: String| Err(CertError::Malformed(why));
        if !is_hex(&self.genesis_hash, 64) {
            return malformed("genesis_hash is not 64 hex characters".into());
        }
        if !valid_network_id(&self.network_id) {
            return malformed("network_id is not a valid network id".into());
        }
        if !valid_node_id(&self.node_id) {
            return malformed("node_id is not 32 lower-case hex characters".into());
        }
        if self.roles.is_empty() || self.roles.len() > ROLES.len() {
            return malformed(format!("roles must list 1 to {} role(s)", ROLES.len()));
        }
        if let Some(role) = self.roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
            return Err(CertError::UnknownRole(role.chars().take(32).collect()));
        }
        if self.expires_at_s <= self.issued_at_s {
            return malformed("expires_at_s is not after issued_at_s".into());
        }
        if self.signatures.len() > MAX_AUTHORITIES {
            return malformed(format!(
                "{} signatures; at most {MAX_AUTHORITIES}",
                self.signatures.len()
            ));
        }
        Ok(())
    }

    /// The clock and the presenter: issued to `node_id`, valid at `now_s`.
    pub fn check_holder(&self, now_s: u64, node_id: &str) -> Result<(), CertError> {
        if self.node_id != node_id {
            return Err(CertError::WrongNode {
                expected: node_id.chars().take(64).collect(),
                got: self.node_id.clone(),
            });
        }
        if self.issued_at_s > now_s.saturating_add(MAX_CLOCK_SKEW_S) {
            return Err(CertError::NotYetValid {
                issued_at_s: self.issued_at_s,
                now_s,
            });
        }
        if now_s >= self.expires_at_s {
            return Err(CertError::Expired {
                expired_at_s: self.expires_at_s,
                now_s,
            });
        }
        Ok(())
    }

    /// A stable key for caching [`Certificate::check_signatures`]: SHA-256 of the JSON bytes.
    pub fn cache_key(&self) -> [u8; 32] {
        Sha256::digest(serde_json::to_vec(self).expect("a certificate serializes")).into()
    }
}

/// Whether `cert` admits `node_id` into `genesis`'s network at `now_s`: same genesis and network,
/// issued to that node, not expired, and signed by at least k distinct authorities of the genesis,
/// every signature valid.
pub fn verify(
    now_s: u64,
    genesis: &Genesis,
    cert: &Certificate,
    node_id: &str,
) -> Result<(), CertError> {
    cert.check_signatures(genesis)?;
    cert.check_holder(now_s, node_id)
}

/// This node's standing in its network, for /api/stats.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AdmissionView {
    /// `open` without a genesis (the built-in default network).
    pub policy: &'static str,
    /// SHA-256 of the genesis; `None` on the built-in default network.
    pub genesis_hash: Option<String>,
    /// Expiry (unix seconds) of this node's own certificate, if it has one.
    pub certificate_expires_at_s: Option<u64>,
}

impl AdmissionView {
    pub fn new(genesis: Option<&Genesis>, certificate: Option<&Certificate>) -> Self {
        Self {
            policy: genesis.map_or(Policy::Open, |g| g.policy).as_str(),
            genesis_hash: genesis.map(Genesis::hash),
            certificate_expires_at_s: certificate.map(|c| c.expires_at_s),
        }
    }

    /// Whether this node holds a valid certificate at `now_s` (verified at start).
    pub fn admitted(&self, now_s: u64) -> bool {
        self.certificate_expires_at_s
            .is_some_and(|expires| now_s < expires)
    }
}

/// Unix seconds of this machine's clock.
pub fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::generate_token;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn key() -> Identity {
        Identity::from_token(&generate_token()).unwrap()
    }

    fn genesis(authorities: &[&Identity], threshold: u32) -> Genesis {
        let keys: Vec<PublicKey> = authorities.iter().map(|a| a.public).collect();
        Genesis::new(
            "permnet",
            "nano",
            Policy::Permissioned,
            &keys,
            threshold,
            RewardSchedule::default(),
            NOW - DAY,
        )
        .unwrap()
    }

    fn certificate(genesis: &Genesis, node: &str, signers: &[&Identity]) -> Certificate {
        let mut cert =
            Certificate::unsigned(genesis, node, vec!["trainer".into()], NOW, NOW + 30 * DAY);
        for signer in signers {
            cert.sign(signer);
        }
        cert
    }

    #[test]
    fn a_certificate_signed_by_the_authority_admits_its_node_until_it_expires() {
        let (authority, node) = (key(), key());
        let g = genesis(&[&authority], 1);
        let cert = certificate(&g, &node.node_id, &[&authority]);
        assert_eq!(verify(NOW, &g, &cert, &node.node_id), Ok(()));
        assert_eq!(verify(NOW + 30 * DAY - 1, &g, &cert, &node.node_id), Ok(()));
        let expired = verify(NOW + 30 * DAY, &g, &cert, &node.node_id).unwrap_err();
        assert_eq!(
            expired,
            CertError::Expired {
                expired_at_s: NOW + 30 * DAY,
                now_s: NOW + 30 * DAY
            }
        );
        assert!(!expired.is_offence());
        assert!(expired.to_string().contains("expired"));
        let early = verify(NOW - 3600, &g, &cert, &node.node_id).unwrap_err();
        assert!(matches!(early, CertError::NotYetValid { .. }));
    }

    #[test]
    fn a_certificate_presented_by_another_node_is_refused() {
        let (authority, node, other) = (key(), key(), key());
        let g = genesis(&[&authority], 1);
        let cert = certificate(&g, &node.node_id, &[&authority]);
        let e = verify(NOW, &g, &cert, &other.node_id).unwrap_err();
        assert!(matches!(e, CertError::WrongNode { .. }) && e.is_offence());
        assert!(e.to_string().contains(&node.node_id));
    }

    #[test]
    fn a_certificate_of_another_genesis_or_network_is_refused() {
        let (authority, node) = (key(), key());
        let g = genesis(&[&authority], 1);
        let mut other = g.clone();
        other.created_at_s += 1;
        let cert = certificate(&other, &node.node_id, &[&authority]);
        assert!(matches!(
            verify(NOW, &g, &cert, &node.node_id),
            Err(CertError::WrongGenesis { .. })
        ));
        // Same authority, same everything, but another network id: another genesis hash too.
        let mut renamed = g.clone();
        renamed.network_id = "othernet".into();
        let cert = certificate(&renamed, &node.node_id, &[&authority]);
        assert!(matches!(
            verify(NOW, &g, &cert, &node.node_id),
            Err(CertError::WrongGenesis { .. })
        ));
        let mut cert = certificate(&g, &node.node_id, &[&authority]);
        cert.network_id = "othernet".into();
        cert.sign(&authority);
        assert!(matches!(
            verify(NOW, &g, &cert, &node.node_id),
            Err(CertError::WrongNetwork { .. })
        ));
    }

    #[test]
    fn forged_foreign_and_duplicated_signatures_are_refused() {
        let (authority, node, impostor) = (key(), key(), key());
        let g = genesis(&[&authority], 1);
        // Signed by a key that is not an authority.
        let cert = certificate(&g, &node.node_id, &[&impostor]);
        assert_eq!(
            verify(NOW, &g, &cert, &node.node_id),
            Err(CertError::UnknownAuthority(hex::encode(
                impostor.public.serialize()
            )))
        );
        // The authority's key with the impostor's signature.
        let mut forged = certificate(&g, &node.node_id, &[&impostor]);
        forged.signatures[0].authority = hex::encode(authority.public.serialize());
        assert!(matches!(
            verify(NOW, &g, &forged, &node.node_id),
            Err(CertError::BadSignature(_))
        ));
        // One flipped bit in the signature.
        let mut flipped = certificate(&g, &node.node_id, &[&authority]);
        let mut bytes = hex::decode(&flipped.signatures[0].signature).unwrap();
        bytes[10] ^= 1;
        flipped.signatures[0].signature = hex::encode(bytes);
        assert!(matches!(
            verify(NOW, &g, &flipped, &node.node_id),
            Err(CertError::BadSignature(_))
        ));
        // The same authority twice does not make two of a 2-of-2.
        let second = key();
        let g2 = genesis(&[&authority, &second], 2);
        let mut doubled = certificate(&g2, &node.node_id, &[&authority]);
        doubled.signatures.push(doubled.signatures[0].clone());
        assert!(matches!(
            verify(NOW, &g2, &doubled, &node.node_id),
            Err(CertError::DuplicateSignature(_))
        ));
        // Garbage in the signature field is an offence, not a panic.
        let mut garbage = certificate(&g, &node.node_id, &[&authority]);
        garbage.signatures[0].signature = "zz".into();
        assert!(matches!(
            verify(NOW, &g, &garbage, &node.node_id),
            Err(CertError::BadSignature(_))
        ));
    }

    #[test]
    fn k_of_m_needs_k_distinct_authorities() {
        let (a, b, c, node) = (key(), key(), key(), key());
        let g = genesis(&[&a, &b, &c], 2);
        let one = certificate(&g, &node.node_id, &[&a]);
        let e = verify(NOW, &g, &one, &node.node_id).unwrap_err();
        assert_eq!(
            e,
            CertError::BelowThreshold {
                valid: 1,
                threshold: 2
            }
        );
        assert!(e.to_string().contains("requires 2"));
        let two = certificate(&g, &node.node_id, &[&a, &c]);
        assert_eq!(verify(NOW, &g, &two, &node.node_id), Ok(()));
        let none = certificate(&g, &node.node_id, &[]);
        assert!(matches!(
            verify(NOW, &g, &none, &node.node_id),
            Err(CertError::BelowThreshold { valid: 0, .. })
        ));
    }

    #[test]
    fn any_altered_field_breaks_every_signature() {
        let (authority, node, other) = (key(), key(), key());
        let g = genesis(&[&authority], 1);
        let cert = certificate(&g, &node.node_id, &[&authority]);
        let tampered: Vec<(&str, Certificate)> = vec![
            (
                "expiry",
                Certificate {
                    expires_at_s: cert.expires_at_s + 365 * DAY,
                    ..cert.clone()
                },
            ),
            (
                "issued",
                Certificate {
                    issued_at_s: cert.issued_at_s - 1,
                    ..cert.clone()
                },
            ),
            (
                "node",
                Certificate {
                    node_id: other.node_id.clone(),
                    ..cert.clone()
                },
            ),
        ];
        for (what, t) in tampered {
            let presenter = t.node_id.clone();
            assert!(
                matches!(
                    verify(NOW, &g, &t, &presenter),
                    Err(CertError::BadSignature(_))
                ),
                "{what}"
            );
        }
        let mut roles = cert.clone();
        roles.roles = vec!["admin".into()];
        assert_eq!(
            verify(NOW, &g, &roles, &node.node_id),
            Err(CertError::UnknownRole("admin".into()))
        );
    }

    #[test]
    fn certificates_and_geneses_round_trip_through_json() {
        let (authority, node) = (key(), key());
        let g = genesis(&[&authority], 1);
        let parsed = Genesis::from_json(&g.to_json_pretty()).unwrap();
        assert_eq!(parsed, g);
        assert_eq!(parsed.hash(), g.hash());
        let cert = certificate(&g, &node.node_id, &[&authority]);
        let text = cert.to_json_pretty();
        assert!(text.len() < 1024, "a certificate is a few hundred bytes");
        assert_eq!(Certificate::from_json(&text).unwrap(), cert);
        assert_eq!(
            Certificate::from_json(&text).unwrap().cache_key(),
            cert.cache_key()
        );
    }

    #[test]
    fn the_genesis_hash_covers_every_field() {
        let a = key();
        let g = genesis(&[&a], 1);
        let mut variants = vec![g.clone(); 6];
        variants[0].network_id = "other".into();
        variants[1].rewards.uptime_per_minute *= 2.0;
        variants[2].policy = Policy::Open;
        variants[3].authorities.clear();
        variants[4].threshold = 2;
        variants[5].created_at_s += 1;
        let hashes: BTreeSet<String> = variants.iter().map(Genesis::hash).collect();
        assert_eq!(hashes.len(), variants.len());
        assert!(!hashes.contains(&g.hash()));
        assert_eq!(g.hash().len(), 64);
        assert_eq!(g.short_hash(), g.hash()[..16]);
    }

    #[test]
    fn genesis_errors_name_the_field() {
        let a = key();
        let g = genesis(&[&a], 1);
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = serde_json::to_value(&g).unwrap();
            f(&mut v);
            Genesis::from_json(&v.to_string()).unwrap_err()
        };
        let cases: Vec<(&str, FieldError)> = vec![
            ("network_id", edit(&|v| v["network_id"] = "a/b".into())),
            ("preset", edit(&|v| v["preset"] = "giant".into())),
            ("model_hash", edit(&|v| v["model_hash"] = "00".into())),
            (
                "rewards",
                edit(&|v| v["rewards"]["max_per_proof"] = (-1.0).into()),
            ),
            ("policy", edit(&|v| v["policy"] = "anarchy".into())),
            (
                "authorities",
                edit(&|v| v["authorities"] = serde_json::json!(["02ab"])),
            ),
            (
                "authorities",
                edit(&|v| v["authorities"] = serde_json::json!([])),
            ),
            ("threshold", edit(&|v| v["threshold"] = 2.into())),
            ("threshold", edit(&|v| v["threshold"] = "one".into())),
            (
                "created_at_s",
                edit(&|v| {
                    v.as_object_mut().unwrap().remove("created_at_s");
                }),
            ),
            ("colour", edit(&|v| v["colour"] = "blue".into())),
        ];
        for (field, error) in cases {
            assert_eq!(error.field, field, "{error:?}");
        }
        // threshold defaults to 1.
        let mut v = serde_json::to_value(&g).unwrap();
        v.as_object_mut().unwrap().remove("threshold");
        assert_eq!(Genesis::from_json(&v.to_string()).unwrap().threshold, 1);
        // An open network may do without authorities.
        let mut open = g.clone();
        open.policy = Policy::Open;
        open.authorities.clear();
        assert_eq!(open.validate(), Ok(()));
    }

    #[test]
    fn files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("genesis.json");
        std::fs::write(&path, "{\"network_id\": 3}").unwrap();
        let e = Genesis::load(&path).unwrap_err();
        assert!(e.to_string().contains("genesis.json"), "{e}");
        let e = Certificate::load(&dir.path().join("absent.json")).unwrap_err();
        assert!(e.to_string().contains("absent.json") && e.reason.contains("cannot read"));
    }
}
