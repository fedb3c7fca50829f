//! NeuroLLM and everything around it that is pure computation: the model, its tokenizer, the data
//! pipeline, parameter flattening, the inner optimizer, checkpoints and generation.

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod data;
pub mod export;
pub mod fused;
pub mod inference;
pub mod llm;
pub mod optim;
pub mod params;
pub mod tokenizer;
pub mod training;

pub use config::NeuroLlmConfig;
pub use llm::NeuroLlm;
