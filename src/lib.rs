//! NeuroShard: a node daemon that trains NeuroLLM together with its peers using DiLoCo.
//! See ARCHITECTURE.md for the map of the code.

pub mod actors;
pub mod admission;
pub mod aggregate;
pub mod config;
pub mod crypto;
pub mod devnet;
pub mod diloco;
pub mod experiment;
pub mod ledger;
pub mod logs;
pub mod model;
pub mod net;
pub mod node;
pub mod simulate;
pub mod status;
pub mod timeline;
pub mod tracker;
pub mod web;
