//! Protocol names, all derived from the network id (and the genesis hash, when the network has a
//! genesis), so separate networks never share a DHT or a gossip topic; and the check two peers run
//! when they meet (same network, same model, same genesis).

use libp2p::StreamProtocol;

/// Version of NeuroShard's own wire protocols (gossip messages, blobs), and of what every node
/// must compute alike from them: 2 took pairwise distances (Krum, Multi-Krum, nearest-neighbour
/// mixing) from the Gram matrix, which changes their last bits and so the verdicts of near-ties;
/// 3 takes that Gram matrix from the int8 codes when every contribution came as int8.
const WIRE_VERSION: u32 = 3;

/// The names one network speaks.
#[derive(Debug, Clone)]
pub struct Protocols {
    pub network_id: String,
    pub model_hash: String,
    /// The first 16 hex characters of the genesis hash; `None` on the built-in default network.
    pub genesis: Option<String>,
}

impl Protocols {
    pub fn new(network_id: &str, model_hash: &str) -> Self {
        Self {
            network_id: network_id.to_string(),
            model_hash: model_hash.to_string(),
            genesis: None,
        }
    }

    /// The names of the network a genesis (short hash, hex) defines.
    pub fn with_genesis(mut self, short_hash: &str) -> Self {
        self.genesis = Some(short_hash.to_string());
        self
    }

    /// The network's name in protocol names: its id, and its genesis when it has one.
    fn scope(&self) -> String {
        match &self.genesis {
            Some(genesis) => format!("{}/{genesis}", self.network_id),
            None => self.network_id.clone(),
        }
    }

    /// What identify announces; [`Protocols::check_peer`] parses it on the other side.
    pub fn identify_version(&self) -> String {
        format!(
            "/neuroshard/{WIRE_VERSION}/{}/{}",
            self.scope(),
            self.model_hash
        )
    }

    pub fn kademlia(&self) -> StreamProtocol {
        self.stream(&format!("/neuroshard/{}/kad/1.0.0", self.scope()))
    }

    pub fn blob(&self) -> StreamProtocol {
        self.stream(&format!("/neuroshard/{}/blob/{WIRE_VERSION}", self.scope()))
    }

    pub fn history(&self) -> StreamProtocol {
        self.stream(&format!(
            "/neuroshard/{}/ledger-history/{WIRE_VERSION}",
            self.scope()
        ))
    }

    pub fn topic(&self, kind: &str) -> String {
        format!("neuroshard/{}/{kind}/{WIRE_VERSION}", self.scope())
    }

    fn stream(&self, name: &str) -> StreamProtocol {
        // Network ids are validated by the config (`[A-Za-z0-9._-]`), so the name is a valid protocol.
        StreamProtocol::try_from_owned(name.to_string()).expect("validated network id")
    }

    /// Whether a peer that identified itself with `their_version` may stay connected; the error
    /// is the reason logged, counted and shown on /api/network.
    pub fn check_peer(&self, their_version: &str) -> Result<(), String> {
        let parts: Vec<&str> = their_version.split('/').collect();
        let (version, network, genesis, model) = match parts.as_slice() {
            [_, "neuroshard", version, network, model] => (version, network, None, model),
            [_, "neuroshard", version, network, genesis, model] => {
                (version, network, Some(*genesis), model)
            }
            _ => {
                return Err(format!(
                    "not a NeuroShard node (protocol {their_version:?})"
                ));
            }
        };
        if *version != WIRE_VERSION.to_string() {
            return Err(format!(
                "wire protocol version {version}, this node speaks {WIRE_VERSION}"
            ));
        }
        if *network != self.network_id {
            return Err(format!(
                "network {network:?}, this node is on {:?}",
                self.network_id
            ));
        }
        if genesis != self.genesis.as_deref() {
            let name =
                |g: Option<&str>| g.map_or("no genesis".to_string(), |g| format!("genesis {g}"));
            return Err(format!(
                "{}, this node is on {}",
                name(genesis),
                name(self.genesis.as_deref())
            ));
        }
        if *model != self.model_hash {
            return Err(format!(
                "model config hash {model}, this node trains {}",
                self.model_hash
            ));
        }
        Ok(())
    }
}

pub const MAX_NETWORK_ID_LEN: usize = 64;

/// Whether `id` may name a network: 1..=64 characters of `[A-Za-z0-9._-]`.
pub fn valid_network_id(id: &str) -> bool {
    (1..=MAX_NETWORK_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_of_the_same_network_and_model_are_accepted() {
        let ours = Protocols::new("mainnet", "abc123");
        assert_eq!(ours.check_peer(&ours.identify_version()), Ok(()));
    }

    #[test]
    fn another_network_another_model_or_a_stranger_is_refused_with_the_reason() {
        let ours = Protocols::new("mainnet", "abc123");
        let other_net = Protocols::new("testnet", "abc123").identify_version();
        assert!(ours.check_peer(&other_net).unwrap_err().contains("testnet"));
        let other_model = Protocols::new("mainnet", "fff000").identify_version();
        assert!(
            ours.check_peer(&other_model)
                .unwrap_err()
                .contains("fff000")
        );
        assert!(
            ours.check_peer("/ipfs/0.1.0")
                .unwrap_err()
                .contains("not a NeuroShard")
        );
        assert!(
            ours.check_peer("/neuroshard/9/mainnet/abc123")
                .unwrap_err()
                .contains("version 9")
        );
    }

    #[test]
    fn peers_of_another_genesis_or_without_one_are_refused_with_the_reason() {
        let ours = Protocols::new("permnet", "abc123").with_genesis("0123456789abcdef");
        assert_eq!(ours.check_peer(&ours.identify_version()), Ok(()));
        let other = Protocols::new("permnet", "abc123").with_genesis("fedcba9876543210");
        let reason = ours.check_peer(&other.identify_version()).unwrap_err();
        assert!(
            reason.contains("genesis fedcba9876543210")
                && reason.contains("this node is on genesis 0123456789abcdef"),
            "{reason}"
        );
        let plain = Protocols::new("permnet", "abc123");
        let reason = ours.check_peer(&plain.identify_version()).unwrap_err();
        assert!(reason.contains("no genesis"), "{reason}");
        let reason = plain.check_peer(&ours.identify_version()).unwrap_err();
        assert!(reason.contains("genesis 0123456789abcdef"), "{reason}");
        assert_ne!(ours.topic("round"), plain.topic("round"));
        assert_ne!(ours.topic("round"), other.topic("round"));
        assert_ne!(ours.kademlia(), other.kademlia());
    }

    #[test]
    fn protocol_names_differ_per_network() {
        let a = Protocols::new("a", "h");
        let b = Protocols::new("b", "h");
        assert_ne!(a.kademlia(), b.kademlia());
        assert_ne!(a.blob(), b.blob());
        assert_ne!(a.topic("heartbeat"), b.topic("heartbeat"));
    }

    #[test]
    fn network_ids_are_restricted_to_safe_characters() {
        assert!(valid_network_id("neuroshard-main_1.0"));
        assert!(!valid_network_id(""));
        assert!(!valid_network_id("a/b"));
        assert!(!valid_network_id(&"x".repeat(65)));
    }
}
