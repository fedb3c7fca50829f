//! Identity: token → secp256k1 secret key → node_id. The same token always gives the same node,
//! and the ids match the Python original's: secret = SHA-256(token) (for a mnemonic, of the hex of
//! its BIP39 seed's first 32 bytes), node_id = hex(SHA-256(compressed public key))[:32].

use secp256k1::{Message, PublicKey, SecretKey, ecdsa};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("token is empty")]
    Empty,
    #[error("token must be 64 hexadecimal characters or a 12-word BIP39 mnemonic: {0}")]
    Malformed(String),
}

/// A node's key pair and the ids derived from it.
#[derive(Clone)]
pub struct Identity {
    secret: SecretKey,
    pub public: PublicKey,
    pub node_id: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// The canonical token string that gets hashed: hex tokens as given (lower-cased), mnemonics as
/// the hex of the first 32 bytes of their BIP39 seed (empty passphrase).
fn canonical_token(token: &str) -> Result<String, TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(token.to_ascii_lowercase());
    }
    let words = token.split_whitespace().count();
    if words == 12 {
        let mnemonic = bip39::Mnemonic::parse_normalized(token)
            .map_err(|e| TokenError::Malformed(format!("invalid mnemonic: {e}")))?;
        return Ok(hex::encode(&mnemonic.to_seed("")[..32]));
    }
    Err(TokenError::Malformed(format!(
        "got {} characters in {words} word(s)",
        token.len()
    )))
}

impl Identity {
    pub fn from_token(token: &str) -> Result<Self, TokenError> {
        let digest: [u8; 32] = Sha256::digest(canonical_token(token)?.as_bytes()).into();
        let secret = SecretKey::from_secret_bytes(digest)
            .map_err(|_| TokenError::Malformed("token hashes to an invalid key".into()))?;
        let public = secret.public_key();
        let node_id = node_id_of(&public);
        Ok(Self {
            secret,
            public,
            node_id,
        })
    }

    /// The libp2p key pair: the same secp256k1 secret, so the PeerId and the wallet are one identity.
    pub fn libp2p_keypair(&self) -> libp2p::identity::Keypair {
        let secret =
            libp2p::identity::secp256k1::SecretKey::try_from_bytes(self.secret.to_secret_bytes())
                .expect("a valid secp256k1 secret is a valid libp2p secp256k1 secret");
        libp2p::identity::secp256k1::Keypair::from(secret).into()
    }

    /// The token of this node's `index`-th Sybil identity (test fault switch
    /// NEUROSHARD_FAULT_SYBIL): hex(SHA-256(secret key bytes ‖ "sybil" ‖ index in decimal)).
    /// Deterministic, so a test that knows the node's token can compute the Sybils' node_ids.
    pub fn sybil_token(&self, index: usize) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.secret.to_secret_bytes());
        hasher.update(b"sybil");
        hasher.update(index.to_string().as_bytes());
        hex::encode(hasher.finalize())
    }

    pub fn peer_id(&self) -> libp2p::PeerId {
        self.libp2p_keypair().public().to_peer_id()
    }

    /// ECDSA secp256k1 over SHA-256(`message`), as 64 compact bytes (low-S).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.secret
            .sign_ecdsa(digest_of(message))
            .serialize_compact()
    }
}

fn digest_of(message: &[u8]) -> Message {
    Message::from_digest(Sha256::digest(message).into())
}

/// node_id = hex(SHA-256(compressed public key))[:32].
pub fn node_id_of(public: &PublicKey) -> String {
    hex::encode(Sha256::digest(public.serialize()))[..32].to_string()
}

/// Whether `signature` (64 compact bytes) is `public`'s ECDSA signature of SHA-256(`message`).
/// High-S signatures are refused, so a signature cannot be re-encoded into a second valid one.
pub fn verify(public: &PublicKey, message: &[u8], signature: &[u8]) -> bool {
    let Ok(signature) = ecdsa::Signature::from_compact(signature) else {
        return false;
    };
    let mut normalized = signature;
    normalized.normalize_s();
    normalized == signature && signature.verify(digest_of(message), public).is_ok()
}

/// The secp256k1 public key a PeerId names. Our PeerIds inline the key (identity multihash), so
/// a peer's messages can be checked against it; any other kind of PeerId gives `None`.
pub fn public_key_of(peer_id: &libp2p::PeerId) -> Option<PublicKey> {
    let multihash = peer_id.as_ref();
    if multihash.code() != 0 {
        return None;
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    PublicKey::from_slice(&key.try_into_secp256k1().ok()?.to_bytes()).ok()
}

/// The node_id of the key a PeerId names ("" for a PeerId that names no secp256k1 key: such a
/// peer signs nothing this node accepts).
pub fn node_id_of_peer(peer_id: &libp2p::PeerId) -> String {
    public_key_of(peer_id)
        .map(|key| node_id_of(&key))
        .unwrap_or_default()
}

/// A fresh random token (64 hex characters) from the operating system's CSPRNG.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("operating system random source");
    hex::encode(bytes)
}

/// A random 64-bit nonce (a proof's nonce must never repeat for a node, also across restarts).
pub fn generate_nonce() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("operating system random source");
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sybil_tokens_are_derived_from_the_secret_and_index() {
        let node = Identity::from_token(&format!("{:064x}", 2)).unwrap();
        let (a, b) = (node.sybil_token(0), node.sybil_token(1));
        assert_eq!(a, node.sybil_token(0), "deterministic");
        assert_ne!(a, b);
        let mut hasher = Sha256::new();
        hasher.update(Sha256::digest(format!("{:064x}", 2).as_bytes()));
        hasher.update(b"sybil0");
        assert_eq!(a, hex::encode(hasher.finalize()));
        assert_ne!(Identity::from_token(&a).unwrap().node_id, node.node_id);
    }

    // Known answers computed independently with Python's hashlib + the `ecdsa` package.
    #[test]
    fn hex_token_gives_the_known_node_id() {
        let id = Identity::from_token(KNOWN_HEX_TOKEN).unwrap();
        assert_eq!(id.node_id, KNOWN_HEX_NODE_ID);
        assert_eq!(hex::encode(id.public.serialize()), KNOWN_HEX_PUBKEY);
        assert_eq!(
            Identity::from_token(&KNOWN_HEX_TOKEN.to_uppercase())
                .unwrap()
                .node_id,
            KNOWN_HEX_NODE_ID
        );
    }

    #[test]
    fn mnemonic_token_gives_the_known_node_id() {
        assert_eq!(
            Identity::from_token(KNOWN_MNEMONIC).unwrap().node_id,
            KNOWN_MNEMONIC_NODE_ID
        );
    }

    #[test]
    fn the_peer_id_names_the_wallet_key() {
        let id = Identity::from_token(KNOWN_HEX_TOKEN).unwrap();
        let libp2p_public = id.libp2p_keypair().public().try_into_secp256k1().unwrap();
        assert_eq!(libp2p_public.to_bytes(), id.public.serialize());
        assert_eq!(
            id.peer_id(),
            Identity::from_token(KNOWN_HEX_TOKEN).unwrap().peer_id()
        );
        assert_ne!(
            id.peer_id(),
            Identity::from_token(KNOWN_MNEMONIC).unwrap().peer_id()
        );
    }

    #[test]
    fn signatures_verify_only_for_the_signer_and_the_message() {
        let id = Identity::from_token(KNOWN_HEX_TOKEN).unwrap();
        let other = Identity::from_token(KNOWN_MNEMONIC).unwrap();
        let signature = id.sign(b"round 7");
        assert!(verify(&id.public, b"round 7", &signature));
        assert!(!verify(&id.public, b"round 8", &signature));
        assert!(!verify(&other.public, b"round 7", &signature));
        assert!(!verify(&id.public, b"round 7", &signature[..63]));
        assert_eq!(public_key_of(&id.peer_id()), Some(id.public));
        assert_eq!(
            node_id_of(&public_key_of(&id.peer_id()).unwrap()),
            id.node_id
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert_eq!(Identity::from_token("  ").unwrap_err(), TokenError::Empty);
        assert!(matches!(
            Identity::from_token("abc"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            Identity::from_token(&"zz".repeat(32)),
            Err(TokenError::Malformed(_))
        ));
        let bad_words = "apple ".repeat(12);
        assert!(matches!(
            Identity::from_token(&bad_words),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn generated_tokens_are_valid_and_distinct() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert_eq!(Identity::from_token(&a).unwrap().node_id.len(), 32);
    }

    const KNOWN_HEX_TOKEN: &str =
        "c7bcca42c5583383e4933fac637e10e9504b8e67346e87b1702e97fe0d1794ec";
    const KNOWN_HEX_PUBKEY: &str =
        "02e88452a053542e3c1198d2bc7fa9bc8c63d82d6a15afc0a0907695070ac40d31";
    const KNOWN_HEX_NODE_ID: &str = "f99a98e479263f0a28a91c4809fe5910";
    const KNOWN_MNEMONIC: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
    const KNOWN_MNEMONIC_NODE_ID: &str = "d72992fd962a53bbab62f8710b11e0f7";
}
