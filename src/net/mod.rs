//! Pure network logic, apart from the swarm: signed wire messages, tracker announcements, the peer
//! table and its decisions, the blob codec. The PeerActor (actors/peer.rs) owns the libp2p Swarm and
//! calls into these; nothing here touches an actor.

pub mod announce;
pub mod blob;
pub mod history;
pub mod meter;
pub mod peer_table;
pub mod protocol;
pub mod redial;
pub mod wire;
