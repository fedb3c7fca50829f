//! Builds the actor tree from a [`Config`], runs until SIGINT/SIGTERM, then shuts down in order:
//! stop the trainer, write the final checkpoint, stop the HTTP server.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_web::web;
use tracing::{error, info, warn};

use crate::actors::aggregator::AggregatorActor;
use crate::actors::checkpoint::{CheckpointActor, CheckpointOptions};
use crate::actors::http::HttpActor;
use crate::actors::ledger::{LedgerActor, LedgerOptions, PonwFault};
use crate::actors::messages::{StopHttp, StopTraining, WriteCheckpoint};
use crate::actors::peer::{GossipFaults, PeerActor, PeerOptions, SlowBlob, gossip_thresholds};
use crate::actors::supervisor::{SupervisorActor, TrainerRecipe};
use crate::actors::sybil::{MAX_SYBILS, SybilActor, SybilOptions};
use crate::actors::sync::{CheckpointTarget, LyingAggregator, RoundSettings, SyncActor};
use crate::actors::trainer::{Cadence, PanicFault, TrainerWork};
use crate::admission::{self, AdmissionView, Certificate, Policy};
use crate::config::Config;
use crate::crypto::{Identity, generate_token};
use crate::diloco::attack::{Attack, HealPoison, poisoned_outer};
use crate::diloco::codec::max_delta_len;
use crate::diloco::weight::WeightRule;
use crate::ledger::checkpoint::Timeouts;
use crate::ledger::store::LedgerStore;
use crate::ledger::witness::Watch;
use crate::logs::LogRing;
use crate::model::backend::{CpuBackend, cpu_device, train_backend_name};
use crate::model::checkpoint::{self, OuterState};
use crate::model::corpus::builtin_corpus;
use crate::model::data::{TokenDataset, load_documents};
use crate::model::optim::{AdamWConfig, LrSchedule};
use crate::model::params::{ParamSpec, flatten, layout};
use crate::model::training::{OptimizerPlacement, TrainerOptions};
use crate::net::peer_table::PeerPolicy;
use crate::net::protocol::Protocols;
use crate::status::{NodeStatus, StatusBoard, TrainerPhase};
use crate::web::ApiState;

/// Why the node could not start. `Input` errors (bad token, data, state dir, port) exit with 2.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Runtime(String),
}

/// Documents of the built-in corpus: ~1.3 MB of text, enough that the micro preset does not
/// memorise it within a few rounds.
const BUILTIN_DOCUMENTS: usize = 20_000;

/// The token from config/flags/env or from `token_file`, if one was given.
fn explicit_token(config: &Config) -> Result<Option<String>, NodeError> {
    if let Some(token) = &config.token {
        return Ok(Some(token.clone()));
    }
    config.token_file.as_deref().map(read_token).transpose()
}

fn read_token(path: &Path) -> Result<String, NodeError> {
    fs::read_to_string(path)
        .map(|t| t.lines().next().unwrap_or("").trim().to_string())
        .map_err(|e| NodeError::Input(format!("token file {}: {e}", path.display())))
}

/// The token kept in the state dir, created on first start, so `neuroshard` alone has a stable identity.
fn kept_token(state_dir: &Path) -> Result<String, NodeError> {
    let kept = state_dir.join("token");
    if kept.exists() {
        return read_token(&kept);
    }
    let token = generate_token();
    write_private(&kept, &token).map_err(|e| {
        NodeError::Input(format!(
            "state dir {}: cannot write token: {e}",
            state_dir.display()
        ))
    })?;
    info!(path = %kept.display(), "created a new wallet token; back it up, it is your identity");
    Ok(token)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)?
        .write_all(format!("{contents}\n").as_bytes())
}

fn prepare_state_dir(dir: &Path) -> Result<(), NodeError> {
    let bad = |e: std::io::Error| NodeError::Input(format!("state dir {}: {e}", dir.display()));
    fs::create_dir_all(dir).map_err(bad)?;
    let probe = dir.join(".write-test");
    fs::write(&probe, b"ok").map_err(bad)?;
    fs::remove_file(&probe).map_err(bad)
}

fn dataset(config: &Config, seq_len: usize) -> Result<TokenDataset, NodeError> {
    let t = &config.training;
    let docs = if t.data.is_empty() {
        builtin_corpus(BUILTIN_DOCUMENTS, t.seed)
    } else {
        load_documents(&t.data).map_err(|e| NodeError::Input(e.to_string()))?
    };
    TokenDataset::new(&docs, seq_len, t.val_fraction, t.seed)
        .map_err(|e| NodeError::Input(e.to_string()))
}

/// This node's training order: the configured seed mixed with its node_id, so peers differ.
fn order_seed(seed: u64, identity: &Identity) -> u64 {
    let id = u64::from_str_radix(&identity.node_id[..16], 16).unwrap_or(0);
    seed ^ id
}

/// The ledger database in the state directory.
pub const LEDGER_FILE: &str = "ledger.sqlite";

/// Everything decided before the first actor starts: checked inputs, the model and the resume point.
struct Prepared {
    identity: Identity,
    data: Option<Arc<TokenDataset>>,
    outer: OuterState,
    resume: Option<checkpoint::TrainerSnapshot>,
    target: CheckpointTarget,
    listener: TcpListener,
    ledger: LedgerStore,
    /// This node's membership certificate, verified for its node_id.
    membership: Option<Certificate>,
}

/// Reads `network.membership`; the error names the file and the field.
fn load_membership(config: &Config) -> Result<Option<Certificate>, NodeError> {
    config
        .network
        .membership
        .as_deref()
        .map(|path| {
            Certificate::load(path)
                .map_err(|e| NodeError::Input(format!("network.membership: {e}")))
        })
        .transpose()
}

/// The certificate must admit this node into the genesis's network now: a node that would present
/// a certificate its peers refuse does not start.
fn check_membership(
    config: &Config,
    certificate: Option<&Certificate>,
    identity: &Identity,
) -> Result<(), NodeError> {
    let (Some(genesis), Some(certificate), Some(path)) = (
        config.genesis.as_ref(),
        certificate,
        config.network.membership.as_deref(),
    ) else {
        return Ok(());
    };
    admission::verify(admission::unix_s(), genesis, certificate, &identity.node_id).map_err(|e| {
        NodeError::Input(format!(
            "network.membership: {}: does not admit node {}: {e}",
            path.display(),
            identity.node_id
        ))
    })
}

fn prepare(config: &Config) -> Result<Prepared, NodeError> {
    // Check every input before the first write, so a bad one leaves nothing behind.
    let to_identity = |token: String| {
        Identity::from_token(&token).map_err(|e| NodeError::Input(format!("token: {e}")))
    };
    let explicit = explicit_token(config)?.map(to_identity).transpose()?;
    let membership = load_membership(config)?;
    if let Some(identity) = &explicit {
        check_membership(config, membership.as_ref(), identity)?;
    }
    let model_config = config.model_config();
    let data = if config.training.enabled {
        Some(dataset(config, model_config.max_seq_len)?)
    } else {
        None
    };
    let address = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&address)
        .map_err(|e| NodeError::Input(format!("port: cannot listen on {address}: {e}")))?;
    check_p2p_ports_free(config)?;
    let state_dir = config.state_dir();
    let device = cpu_device();
    <CpuBackend as burn::tensor::backend::Backend>::seed(&device, config.training.seed);
    let initial = model_config.init::<CpuBackend>(&device);
    let specs = Arc::new(layout(&initial));
    let model_hash = model_config.hash_hex();
    let checkpoint_dir = state_dir.join(checkpoint::CHECKPOINT_DIR);
    // Checked before anything is written; a node with a checkpoint of its own resumes from it.
    let init_weights = match &config.model.init_weights {
        Some(path) if !checkpoint_dir.join(checkpoint::CHECKPOINT_FILE).exists() => {
            Some(initial_weights(path, &model_hash, &specs)?)
        }
        _ => None,
    };
    prepare_state_dir(&state_dir)?;
    let identity = match explicit {
        Some(identity) => identity,
        None => {
            let identity = to_identity(kept_token(&state_dir)?)?;
            check_membership(config, membership.as_ref(), &identity)?;
            identity
        }
    };
    let ledger = LedgerStore::open(&state_dir.join(LEDGER_FILE), config.ledger.rewards.clone())
        .map_err(|e| NodeError::Input(e.to_string()))?;
    let data =
        data.map(|d| Arc::new(d.with_order_seed(order_seed(config.training.seed, &identity))));

    let target = CheckpointTarget {
        dir: checkpoint_dir,
        model_hash: model_hash.clone(),
        layout: specs.clone(),
        lock: Arc::new(Mutex::new(())),
    };
    let (outer, resume) = match checkpoint::load(&target.dir, &model_hash, &specs)
        .map_err(|e| NodeError::Input(e.to_string()))?
    {
        Some(ckpt) => {
            info!(
                step = ckpt.trainer.counters.global_step,
                round = ckpt.outer.round,
                "resuming from checkpoint"
            );
            (ckpt.outer, Some(Arc::unwrap_or_clone(ckpt.trainer)))
        }
        None => {
            let theta0 = init_weights.unwrap_or_else(|| flatten(&initial));
            let momentum = vec![0.0; theta0.len()];
            (
                OuterState {
                    round: 0,
                    theta0,
                    momentum,
                    residual: None,
                },
                None,
            )
        }
    };
    Ok(Prepared {
        identity,
        data,
        outer,
        resume,
        target,
        listener,
        ledger,
        membership,
    })
}

/// `model.init_weights`: the θ₀ of the checkpoint file `path`, which must be of this model.
fn initial_weights(
    path: &Path,
    model_hash: &str,
    specs: &[ParamSpec],
) -> Result<Vec<f32>, NodeError> {
    let field = |e: String| NodeError::Input(format!("model.init_weights: {e}"));
    let bytes = checkpoint::read_bytes(path)
        .map_err(|e| field(e.to_string()))?
        .ok_or_else(|| field(format!("{} does not exist", path.display())))?;
    let start =
        checkpoint::parse(path, &bytes, model_hash, specs).map_err(|e| field(e.to_string()))?;
    info!(path = %path.display(), round = start.outer.round, "starting from the θ₀ of a checkpoint");
    Ok(start.outer.theta0)
}

/// Fails early (before any write) when a fixed libp2p listen port is taken; the Swarm binds the
/// ports for real once it runs.
fn check_p2p_ports_free(config: &Config) -> Result<(), NodeError> {
    use libp2p::multiaddr::Protocol;
    for text in &config.network.listen {
        let addr: libp2p::Multiaddr = text.parse().map_err(|e| {
            NodeError::Input(format!("network.listen: {text:?} is not a multiaddr: {e}"))
        })?;
        let mut parts = addr.iter();
        let ip: std::net::IpAddr = match parts.next() {
            Some(Protocol::Ip4(ip)) => ip.into(),
            Some(Protocol::Ip6(ip)) => ip.into(),
            _ => continue,
        };
        if let Some(Protocol::Tcp(port)) = parts.next()
            && port != 0
        {
            TcpListener::bind((ip, port)).map_err(|e| {
                NodeError::Input(format!("network.listen: cannot listen on {addr}: {e}"))
            })?;
        }
    }
    Ok(())
}

/// `num_params`: the model's size, which fixes the largest blob the protocol ever sends.
fn peer_options(
    config: &Config,
    identity: Identity,
    model_hash: &str,
    num_params: usize,
    membership: Option<Certificate>,
) -> PeerOptions {
    let n = &config.network;
    // Every address was parsed when the config was validated.
    let addrs = |texts: &[String]| texts.iter().filter_map(|t| t.parse().ok()).collect();
    let protocols = Protocols::new(&n.network_id, model_hash);
    PeerOptions {
        identity,
        protocols: match &config.genesis {
            Some(genesis) => protocols.with_genesis(&genesis.short_hash()),
            None => protocols,
        },
        genesis: config.genesis.clone(),
        membership,
        listen: addrs(&n.listen),
        announce_addrs: addrs(&n.announce_addrs),
        seed_peers: addrs(&config.seed_peers),
        tracker: config.tracker.clone(),
        mdns: n.mdns,
        policy: PeerPolicy {
            heartbeat_interval: Duration::from_secs(n.heartbeat_interval_s),
            drop_after_intervals: n.drop_after_intervals,
            gossip_limits: config.gossip_limits(),
            ban_after_rejections: n.ban_after_rejections,
            ban_below_score: gossip_thresholds().graylist_threshold,
            ban_for: Duration::from_secs(n.ban_s),
        },
        announce_interval: Duration::from_secs(n.announce_interval_s),
        target_peers: n.target_peers,
        // No peer needs to send a longer blob of this model (the longest Δ any codec makes;
        // θ₀ and the momentum are shorter), whatever `network.max_blob_mib` says.
        max_blob_bytes: (n.max_blob_mib << 20).min(max_delta_len(num_params)),
        blob_timeout: Duration::from_secs(n.blob_timeout_s),
        faults: GossipFaults {
            garbage: fault_switch("NEUROSHARD_FAULT_GOSSIP_GARBAGE").is_some_and(|n| n > 0),
            flood: fault_switch("NEUROSHARD_FAULT_GOSSIP_FLOOD")
                .map_or(0, |n| n.min(10_000) as u32),
            ..Default::default()
        },
    }
}

/// `own_admitted`: this node holds a certificate verified at start (permissioned networks).
fn round_settings(config: &Config, own_admitted: bool) -> RoundSettings {
    let d = &config.diloco;
    RoundSettings {
        optimizer: d.outer_optimizer(),
        aggregation: d.aggregation.clone(),
        compression: d.compression.clone(),
        closing: d.round_options(),
        weight_rule: match config.genesis.as_ref().map(|g| g.policy) {
            Some(Policy::Permissioned) => WeightRule::Permissioned,
            Some(Policy::Open) | None => WeightRule::Open,
        },
        own_admitted,
        max_delta_norm: d.max_delta_norm,
        attack: byzantine_fault(),
        sharding: d.sharding,
        lying_aggregator: lying_aggregator_fault(),
        listen_first: Duration::from_secs(config.network.heartbeat_interval_s) * 2,
    }
}

/// NEUROSHARD_FAULT_LYING_AGGREGATOR=1: serve this node's aggregated slices scaled by −10;
/// `=from:<round>`: all of them from that round on; `=with:<node_id>`: only the slices it
/// aggregates with that node alone (two colluders).
fn lying_aggregator_fault() -> Option<LyingAggregator> {
    let value = std::env::var("NEUROSHARD_FAULT_LYING_AGGREGATOR").ok()?;
    let from = value.strip_prefix("from:").map(str::parse::<u64>);
    let lie = match (value.strip_prefix("with:"), from) {
        _ if value == "1" => LyingAggregator::Always,
        (_, Some(Ok(round))) => LyingAggregator::From(round),
        (Some(partner), _) if !partner.is_empty() => LyingAggregator::With(partner.to_string()),
        _ => {
            warn!(%value, "ignoring NEUROSHARD_FAULT_LYING_AGGREGATOR: expected 1, from:<round> or with:<node_id>");
            return None;
        }
    };
    warn!(
        ?lie,
        "test fault switch is on: this node serves wrong slice reports"
    );
    Some(lie)
}

/// Test fault switch NEUROSHARD_FAULT_BYZANTINE=sign_flip|scale|gaussian|nan|alie[:Z]|ipm[:EPSILON].
fn byzantine_fault() -> Option<Attack> {
    let name = std::env::var("NEUROSHARD_FAULT_BYZANTINE").ok()?;
    let attack = Attack::parse(&name);
    match attack {
        Some(_) => warn!(%name, "test fault switch is on: this node sends poisoned deltas"),
        None => {
            warn!(%name, expected = Attack::NAMES, "ignoring NEUROSHARD_FAULT_BYZANTINE")
        }
    }
    attack
}

/// The attacker's test fault switches (README "Test fault switches").
struct AttackSwitches {
    /// NEUROSHARD_FAULT_SYBIL=N: extra identities.
    sybils: usize,
    /// NEUROSHARD_FAULT_SYBIL_CERTS=DIR: where identity i finds its certificate, sybil-<i>.json.
    certificates: Option<std::path::PathBuf>,
    /// NEUROSHARD_FAULT_HEAL_POISON=1|nan|far.
    heal_poison: Option<HealPoison>,
    /// NEUROSHARD_FAULT_VERDICT_FORGE=1.
    verdict_forge: bool,
    /// NEUROSHARD_FAULT_SLOW_BLOB=1|never.
    slow_blob: Option<SlowBlob>,
}

/// A fault switch with named values: `parse` of the variable's value, warned about either way.
fn named_switch<T>(name: &str, expected: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    let value = std::env::var(name).ok()?;
    let parsed = parse(&value);
    match parsed {
        Some(_) => warn!(%name, %value, "test fault switch is on"),
        None => warn!(%name, %value, "ignoring a fault switch: expected {expected}"),
    }
    parsed
}

fn attack_switches() -> AttackSwitches {
    let sybils = fault_switch("NEUROSHARD_FAULT_SYBIL").map_or(0, |n| {
        if n as usize > MAX_SYBILS {
            warn!(n, max = MAX_SYBILS, "NEUROSHARD_FAULT_SYBIL capped");
        }
        (n as usize).min(MAX_SYBILS)
    });
    AttackSwitches {
        sybils,
        certificates: std::env::var_os("NEUROSHARD_FAULT_SYBIL_CERTS").map(Into::into),
        heal_poison: named_switch("NEUROSHARD_FAULT_HEAL_POISON", "1, nan or far", |v| {
            HealPoison::parse(v)
        }),
        verdict_forge: fault_switch("NEUROSHARD_FAULT_VERDICT_FORGE").is_some_and(|n| n > 0),
        slow_blob: named_switch("NEUROSHARD_FAULT_SLOW_BLOB", "1 or never", SlowBlob::parse),
    }
}

fn trainer_recipe(config: &Config, data: Arc<TokenDataset>) -> TrainerRecipe {
    let t = &config.training;
    TrainerRecipe {
        model: config.model_config(),
        data,
        options: TrainerOptions {
            batch_size: t.batch_size,
            schedule: LrSchedule {
                peak_lr: t.lr,
                warmup_steps: t.warmup_steps,
                total_steps: t.total_steps,
                min_lr_ratio: t.min_lr_ratio,
            },
            inner_steps: config.diloco.inner_steps,
            adamw: AdamWConfig {
                beta1: t.beta1,
                beta2: t.beta2,
                eps: 1e-8,
                weight_decay: t.weight_decay,
                grad_clip: t.grad_clip,
            },
            eval_sequences: t.eval_sequences,
            optimizer: OptimizerPlacement::for_backend(),
        },
        cadence: Cadence {
            inner_steps: config.diloco.inner_steps,
            eval_every: t.eval_every,
            eval_every_rounds: t.eval_every_rounds,
            log_every: t.log_every,
            checkpoint_every: t.checkpoint_every,
        },
        fault: PanicFault {
            at_step: fault_switch("NEUROSHARD_FAULT_TRAINER_PANIC_AT_STEP"),
            work: trainer_fault_work(),
            fired: Default::default(),
        },
    }
}

/// NEUROSHARD_FAULT_TRAINER_PANIC_IN (documented in README): which trainer work panics; step
/// when unset or unknown (a warning says so).
fn trainer_fault_work() -> TrainerWork {
    let Ok(name) = std::env::var("NEUROSHARD_FAULT_TRAINER_PANIC_IN") else {
        return TrainerWork::Step;
    };
    TrainerWork::parse(&name).unwrap_or_else(|| {
        warn!(%name, "NEUROSHARD_FAULT_TRAINER_PANIC_IN is not step|evaluate|reset|snapshot; using step");
        TrainerWork::Step
    })
}

/// A test fault switch (documented in README): a number in an environment variable.
fn fault_switch(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(n) => {
            warn!(%name, n, "test fault switch is on");
            Some(n)
        }
        Err(_) => {
            warn!(%name, %value, "ignoring a fault switch that is not a number");
            None
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Log lines the dashboard's logs tab can look back on.
pub const LOG_LINES_KEPT: usize = 2000;

/// Runs a node until SIGINT/SIGTERM; `logs` is what the tracing subscriber records for the API. Must be called inside an actix `System`.
pub async fn run(config: Config, logs: LogRing) -> Result<(), NodeError> {
    let prepared = prepare(&config)?;
    let model_config = config.model_config();
    let training = prepared.data.is_some();
    info!(node_id = %prepared.identity.node_id, preset = %config.model.preset, params = model_config.num_params(), backend = train_backend_name(), "node starting");
    let admission = AdmissionView::new(config.genesis.as_ref(), prepared.membership.as_ref());
    // Without a certificate in a permissioned network, this node observes: it may train locally
    // and serve the model, and says so in its heartbeats (role observer).
    let observer = config
        .genesis
        .as_ref()
        .is_some_and(|g| g.policy == Policy::Permissioned)
        && prepared.membership.is_none();
    if let Some(genesis) = &config.genesis {
        info!(network = %genesis.network_id, genesis = %genesis.hash(), policy = admission.policy, certificate_expires_at_s = ?admission.certificate_expires_at_s, "network defined by a genesis");
    }
    for advice in config.advice() {
        warn!("{advice}");
    }
    if observer {
        warn!(
            "no membership certificate (network.membership, --membership) in a permissioned network: this node only observes; its deltas, proofs and verdicts count for nothing on other nodes"
        );
    }

    let status = StatusBoard::new(NodeStatus {
        node_id: prepared.identity.node_id.clone(),
        peer_id: prepared.identity.peer_id().to_string(),
        role: if training && !observer {
            "trainer"
        } else {
            "observer"
        },
        version: env!("CARGO_PKG_VERSION"),
        preset: config.model.preset.clone(),
        num_params: model_config.num_params(),
        backend: train_backend_name(),
        phase: if training {
            TrainerPhase::Starting
        } else {
            TrainerPhase::Disabled
        },
        global_step: prepared
            .resume
            .as_ref()
            .map_or(0, |r| r.counters.global_step),
        loss: None,
        val_loss: None,
        initial_val_loss: None,
        tokens_per_sec: 0.0,
        tokens_seen: 0,
        lr: 0.0,
        trainer_restarts: 0,
        last_crash: None,
        inner_step: 0,
        inner_steps_total: config.diloco.inner_steps,
        outer_step_count: prepared.outer.round,
        last_outer_reason: None,
        round_state: "inner steps running".into(),
        last_round: None,
        theta0_hash: String::new(),
        momentum_hash: String::new(),
        heals: 0,
        last_heal: None,
        checkpoints_written: 0,
        last_checkpoint_step: None,
        weights: None,
        weights_version: 0,
        network: Default::default(),
        neuro: Default::default(),
        admission,
        health: Default::default(),
    });
    status.publish_weights(Arc::new(
        prepared
            .resume
            .as_ref()
            .map_or_else(|| prepared.outer.theta0.clone(), |r| r.params.clone()),
    ));

    let settings = round_settings(&config, prepared.membership.is_some());
    let switches = attack_switches();
    let sybils: Vec<Identity> = (0..switches.sybils)
        .map(|i| {
            Identity::from_token(&prepared.identity.sybil_token(i))
                .expect("a SHA-256 hex digest is a valid token")
        })
        .collect();
    let mut network = peer_options(
        &config,
        prepared.identity.clone(),
        &model_config.hash_hex(),
        model_config.num_params(),
        prepared.membership.clone(),
    );
    network.faults.heal_poison = switches
        .heal_poison
        .map(|kind| Arc::new(poisoned_outer(kind, &prepared.outer.theta0)));
    network.faults.slow_blob = switches.slow_blob;
    network.faults.own_sybils = sybils.iter().map(Identity::peer_id).collect();
    let peers = PeerActor::start(network.clone(), status.clone())
        .await
        .map_err(NodeError::Input)?;
    if !sybils.is_empty() || switches.verdict_forge {
        let options = SybilOptions {
            network,
            identities: sybils,
            num_params: prepared.outer.theta0.len(),
            compression: config.diloco.compression.clone(),
            attack: settings.attack,
            verdict_forge: switches.verdict_forge,
            certificates: switches.certificates,
        };
        SybilActor::start(options, status.clone(), peers.clone())
            .await
            .map_err(NodeError::Input)?;
    }
    let ledger_options = LedgerOptions {
        identity: prepared.identity.clone(),
        network: config.network.network_id.clone(),
        schedule: config.ledger.rewards.clone(),
        limits: config.ledger.limits.clone(),
        uptime_interval: Duration::from_secs(config.ledger.uptime_interval_s),
        watch: Watch {
            heartbeat_ms: config.network.heartbeat_interval_s.saturating_mul(1000),
            silence_ms: config
                .network
                .heartbeat_interval_s
                .saturating_mul(1000)
                .saturating_mul(config.network.drop_after_intervals.into()),
        },
        fault: PonwFault {
            cheat: fault_switch("NEUROSHARD_FAULT_PONW").is_some_and(|n| n > 0),
            inflate_claims: fault_switch("NEUROSHARD_FAULT_CLAIM_INFLATION").is_some_and(|n| n > 0),
            double_spend_backdate_s: fault_switch("NEUROSHARD_FAULT_DOUBLE_SPEND"),
            forge_history: fault_switch("NEUROSHARD_FAULT_HISTORY_FORGE").is_some_and(|n| n > 0),
        },
    };
    let (ledger_store, ledger_peers, ledger_status) =
        (prepared.ledger, peers.clone(), status.clone());
    // The ledger blocks on SQLite: it gets a thread of its own.
    let ledger = LedgerActor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
        LedgerActor::new(ledger_store, ledger_options, ledger_peers, ledger_status)
    });
    CheckpointActor::new(
        CheckpointOptions {
            identity: prepared.identity.clone(),
            network: config.network.network_id.clone(),
            schedule: config.ledger.rewards.clone(),
            delay: Duration::from_secs(config.ledger.checkpoint_delay_s),
            timeouts: Timeouts::default(),
            forge: fault_switch("NEUROSHARD_FAULT_CHECKPOINT_FORGE").is_some_and(|n| n > 0),
        },
        ledger.clone(),
        peers.clone(),
    )
    .start();
    let aggregator = SyncArbiter::start(1, || AggregatorActor);
    let sync = SyncActor::new(
        prepared.identity.node_id.clone(),
        prepared.outer,
        prepared.resume,
        settings,
        aggregator,
        prepared.target,
        status.clone(),
        peers.clone(),
        ledger.clone(),
    )
    .start();
    let supervisor = prepared.data.map(|data| {
        SupervisorActor::new(trainer_recipe(&config, data), sync.clone(), status.clone()).start()
    });

    let state = web::Data::new(ApiState::new(
        status.clone(),
        model_config,
        training,
        peers,
        ledger,
        config.api_key.clone(),
        logs,
    ));
    let http = HttpActor::serve(prepared.listener, state)
        .map_err(|e| NodeError::Runtime(format!("HTTP server: {e}")))?
        .start();
    info!(address = %format!("http://{}:{}", config.host, config.port), "API and dashboard listening");

    shutdown_signal().await;
    info!("shutting down: stopping the trainer");
    let snapshot = match &supervisor {
        Some(s) => s.send(StopTraining).await.ok().flatten(),
        None => None,
    };
    if training {
        match sync.send(WriteCheckpoint(snapshot)).await {
            Ok(Ok(path)) => info!(path = %path.display(), "final checkpoint written"),
            Ok(Err(e)) => error!(error = %e, "final checkpoint failed"),
            Err(e) => error!(error = %e, "sync actor gone; no final checkpoint"),
        }
    }
    let _ = http.send(StopHttp).await;
    info!("stopped");
    Ok(())
}
