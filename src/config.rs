//! One typed configuration, layered: built-in defaults < TOML file < `NEUROSHARD_*` environment
//! variables < command-line flags. config/default.toml documents every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use libp2p::Multiaddr;

use crate::admission::Genesis;
use crate::aggregate::AggregationConfig;
use crate::aggregate::shard::ShardOptions;
use crate::diloco::OuterOptimizer;
use crate::diloco::codec::CodecConfig;
use crate::diloco::round::RoundOptions;
use crate::ledger::rewards::{MAX_EPOCH_S, RewardSchedule};
use crate::ledger::verify::ProofLimits;
use crate::model::NeuroLlmConfig;
use crate::model::config::PRESETS;
use crate::net::peer_table::{GossipLimits, HonestGossip, MAX_PEERS};
use crate::net::protocol::valid_network_id;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Wallet token (64 hex characters or a 12-word BIP39 mnemonic). Prefer `token_file` or
    /// NEUROSHARD_TOKEN over writing it into a shared config file.
    pub token: Option<String>,
    /// File whose first line is the token.
    pub token_file: Option<PathBuf>,
    /// Address the HTTP API and dashboard bind to.
    pub host: String,
    pub port: u16,
    /// Tracker URL used only to bootstrap peer discovery.
    pub tracker: Option<String>,
    /// Multiaddrs of peers to bootstrap from without a tracker.
    pub seed_peers: Vec<String>,
    /// Holds checkpoints (and the ledger). `~` is the home directory.
    pub state_dir: PathBuf,
    /// tracing filter, e.g. "info" or "neuroshard=debug".
    pub log_level: String,
    pub model: ModelSection,
    pub training: TrainingSection,
    pub diloco: DilocoSection,
    pub network: NetworkSection,
    pub ledger: LedgerSection,
    /// Bearer key of the mutating API endpoints (/api/wallet/send, /api/stake); without one they
    /// are refused. Never the wallet token: a leaked API key cannot sign anything off this node.
    pub api_key: Option<String>,
    /// The genesis `network.genesis` names, loaded and checked; its network id, preset and reward
    /// schedule are already applied to the sections above.
    #[serde(skip)]
    pub genesis: Option<Genesis>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSection {
    /// Seconds between this node's uptime proofs.
    pub uptime_interval_s: u64,
    /// Seconds after an emission epoch ends before its checkpoint is decided: at least the
    /// freshness window (no fresh event of the epoch can arrive after it), plus time for the
    /// last rounds' verdicts and the uptime witnesses to settle its proofs.
    pub checkpoint_delay_s: u64,
    pub rewards: RewardSchedule,
    pub limits: ProofLimits,
}

impl Default for LedgerSection {
    fn default() -> Self {
        Self {
            uptime_interval_s: 60,
            checkpoint_delay_s: 420,
            rewards: RewardSchedule::default(),
            limits: ProofLimits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// Peers of another network id are refused; protocols and topics are named after it.
    pub network_id: String,
    /// Genesis file (`neuroshard network init`): defines the network (id, model preset, reward
    /// schedule, admission policy, authority keys). None: the built-in default, open network.
    pub genesis: Option<PathBuf>,
    /// This node's membership certificate (`neuroshard network admit`), presented to peers.
    pub membership: Option<PathBuf>,
    /// Multiaddrs the libp2p node listens on.
    pub listen: Vec<String>,
    /// Multiaddrs announced to peers and the tracker instead of the listen addresses (NAT, public IP).
    pub announce_addrs: Vec<String>,
    /// Discover peers on the local network by multicast DNS.
    pub mdns: bool,
    /// Seconds between signed heartbeats.
    pub heartbeat_interval_s: u64,
    /// A peer silent for this many heartbeat intervals is dropped from the peer table.
    pub drop_after_intervals: u32,
    /// Seconds between announcements to the tracker.
    pub announce_interval_s: u64,
    /// Connections this node opens on its own to peers it discovers.
    pub target_peers: usize,
    /// Largest blob (pseudo-gradient, model state) accepted from a peer, in MiB.
    pub max_blob_mib: u64,
    /// Seconds a blob transfer may take.
    pub blob_timeout_s: u64,
    /// Gossip messages one node may originate per heartbeat interval on each topic; more are
    /// rejected. None: derived per topic from the settings (`Config::gossip_limits`); set, it
    /// applies to every topic and may not be below what an honest node sends on its busiest.
    pub max_messages_per_interval: Option<u32>,
    /// Rejected messages within one heartbeat interval that get a peer banned.
    pub ban_after_rejections: u32,
    /// Seconds a ban lasts.
    pub ban_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// nano | micro | bootstrap
    pub preset: String,
    /// A node's checkpoint file whose θ₀ a new node starts from instead of a random
    /// initialisation (a network that starts from a trained model). Its own checkpoint, once it
    /// has one, takes precedence.
    pub init_weights: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    pub enabled: bool,
    /// Text data: .txt / .jsonl files or directories. Empty: the built-in generated corpus.
    pub data: Vec<PathBuf>,
    pub batch_size: usize,
    /// Peak learning rate of the inner AdamW.
    pub lr: f64,
    pub warmup_steps: u64,
    /// Step at which the cosine decay reaches `lr * min_lr_ratio`.
    pub total_steps: u64,
    pub min_lr_ratio: f64,
    pub beta1: f32,
    pub beta2: f32,
    pub weight_decay: f32,
    pub grad_clip: f32,
    /// Fraction of the token stream held out for validation.
    pub val_fraction: f64,
    /// Held-out sequences per validation-loss estimate.
    pub eval_sequences: usize,
    /// Validation loss every N steps (and at the end of each round).
    pub eval_every: u64,
    /// The round-start validation of θ₀ only at every Nth round (1: every round). Short rounds
    /// of a large model spend more on these evaluations than on training.
    pub eval_every_rounds: u64,
    /// Progress log line every N steps.
    pub log_every: u64,
    /// Checkpoint every N steps (and on shutdown).
    pub checkpoint_every: u64,
    /// Seed of the data order and of the initial model.
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DilocoSection {
    /// H: inner steps between outer synchronisations.
    pub inner_steps: u64,
    pub outer_lr: f32,
    pub outer_momentum: f32,
    /// Rounds over which the outer momentum grows from 0 to `outer_momentum`.
    pub outer_momentum_warmup_rounds: u64,
    /// Contributions (this node's included) a round needs before its deadline.
    pub min_peers: usize,
    /// Fraction of the expected trainers a round needs before its deadline.
    pub quorum_fraction: f64,
    /// Seconds a round waits for peers' deltas once this node's own is ready.
    pub round_deadline_s: u64,
    /// Seconds deltas still in flight are waited for once the quorum is in hand.
    pub straggler_grace_s: u64,
    /// A peer's delta with a larger L2 norm is refused before aggregation.
    pub max_delta_norm: f32,
    /// How deltas are encoded for the network.
    pub compression: CodecConfig,
    /// How a round's deltas are combined.
    pub aggregation: AggregationConfig,
    /// When and how rounds run sharded (each node aggregates a few slices of the vector).
    pub sharding: ShardOptions,
}

impl DilocoSection {
    /// When a round closes, as the round machine decides it.
    pub fn round_options(&self) -> RoundOptions {
        RoundOptions {
            min_peers: self.min_peers,
            quorum_fraction: self.quorum_fraction,
            deadline: Duration::from_secs(self.round_deadline_s),
            // A grace past the deadline is the deadline.
            straggler_grace: Duration::from_secs(self.straggler_grace_s.min(self.round_deadline_s)),
        }
    }

    pub fn outer_optimizer(&self) -> OuterOptimizer {
        OuterOptimizer {
            lr: self.outer_lr,
            momentum: self.outer_momentum,
            momentum_at_workers: self.aggregation.worker_momentum,
            momentum_warmup_rounds: self.outer_momentum_warmup_rounds,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            token: None,
            token_file: None,
            host: "127.0.0.1".into(),
            port: 8000,
            tracker: None,
            seed_peers: Vec::new(),
            state_dir: PathBuf::from("~/.neuroshard"),
            log_level: "info".into(),
            model: ModelSection::default(),
            training: TrainingSection::default(),
            diloco: DilocoSection::default(),
            network: NetworkSection::default(),
            ledger: LedgerSection::default(),
            api_key: None,
            genesis: None,
        }
    }
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            network_id: "mainnet".into(),
            genesis: None,
            membership: None,
            listen: vec!["/ip4/0.0.0.0/tcp/9000".into()],
            announce_addrs: Vec::new(),
            mdns: true,
            heartbeat_interval_s: 10,
            drop_after_intervals: 3,
            announce_interval_s: 60,
            target_peers: 32,
            max_blob_mib: 512,
            blob_timeout_s: 300,
            max_messages_per_interval: None,
            ban_after_rejections: 10,
            ban_s: 600,
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            preset: "micro".into(),
            init_weights: None,
        }
    }
}

impl Default for TrainingSection {
    fn default() -> Self {
        Self {
            enabled: true,
            data: Vec::new(),
            batch_size: 8,
            lr: 1e-3,
            warmup_steps: 100,
            total_steps: 100_000,
            min_lr_ratio: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 0.1,
            grad_clip: 1.0,
            val_fraction: 0.05,
            eval_sequences: 64,
            eval_every: 100,
            eval_every_rounds: 1,
            log_every: 10,
            checkpoint_every: 100,
            seed: 0,
        }
    }
}

impl Default for DilocoSection {
    fn default() -> Self {
        Self {
            inner_steps: 500,
            outer_lr: 1.0,
            outer_momentum: 0.7,
            outer_momentum_warmup_rounds: 4,
            min_peers: 1,
            quorum_fraction: 0.66,
            round_deadline_s: 120,
            straggler_grace_s: 15,
            max_delta_norm: 1e5,
            compression: CodecConfig::default(),
            aggregation: AggregationConfig::default(),
            sharding: ShardOptions::default(),
        }
    }
}

/// A configuration problem, naming where the bad value came from and which key it is.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: key `{key}`: {reason}")]
pub struct ConfigError {
    pub source_name: String,
    pub key: String,
    pub reason: String,
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub tracker: Option<String>,
    pub seed_peers: Option<Vec<String>>,
    pub state_dir: Option<PathBuf>,
    pub preset: Option<String>,
    pub data: Option<Vec<PathBuf>>,
    pub training: Option<bool>,
    pub diloco_steps: Option<u64>,
    pub network_id: Option<String>,
    pub listen: Option<Vec<String>>,
    pub announce_addrs: Option<Vec<String>>,
    pub genesis: Option<PathBuf>,
    pub membership: Option<PathBuf>,
}

impl CliOverrides {
    fn into_figment(self, mut figment: Figment) -> Figment {
        fn set<T: Serialize>(f: Figment, key: &str, value: Option<T>) -> Figment {
            match value {
                Some(v) => f.merge(Serialized::default(key, v)),
                None => f,
            }
        }
        figment = set(figment, "token", self.token);
        figment = set(figment, "token_file", self.token_file);
        figment = set(figment, "host", self.host);
        figment = set(figment, "port", self.port);
        figment = set(figment, "tracker", self.tracker);
        figment = set(figment, "seed_peers", self.seed_peers);
        figment = set(figment, "state_dir", self.state_dir);
        figment = set(figment, "model.preset", self.preset);
        figment = set(figment, "training.data", self.data);
        figment = set(figment, "training.enabled", self.training);
        figment = set(figment, "network.network_id", self.network_id);
        figment = set(figment, "network.listen", self.listen);
        figment = set(figment, "network.announce_addrs", self.announce_addrs);
        figment = set(figment, "network.genesis", self.genesis);
        figment = set(figment, "network.membership", self.membership);
        set(figment, "diloco.inner_steps", self.diloco_steps)
    }
}

fn describe(error: figment::Error) -> ConfigError {
    let source_name = match (
        &error.metadata,
        error.metadata.as_ref().and_then(|m| m.source.as_ref()),
    ) {
        (_, Some(source)) => source.to_string(),
        (Some(meta), None) => meta.name.to_string(),
        _ => "configuration".into(),
    };
    let key = if error.path.is_empty() {
        "-".into()
    } else {
        error.path.join(".")
    };
    ConfigError {
        source_name,
        key,
        reason: error.kind.to_string(),
    }
}

/// Rounds shorter than this many inner steps were measured to train better without outer momentum
/// (`Config::advice`); the outer optimizer's default was chosen at H = 50 and H = 500.
const SHORT_ROUND_STEPS: u64 = 50;

impl Config {
    /// Defaults < `file` < NEUROSHARD_* environment < `cli`; then the genesis, if one is named.
    pub fn load(file: Option<&Path>, cli: CliOverrides) -> Result<Self, ConfigError> {
        // What was set explicitly (file, environment, flags), without the defaults: a genesis
        // fills in the rest, and an explicit value that contradicts it is an error.
        let mut explicit = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError {
                    source_name: path.display().to_string(),
                    key: "-".into(),
                    reason: "config file not found".into(),
                });
            }
            explicit = explicit.merge(Toml::file_exact(path));
        }
        // NEUROSHARD_FAULT_* are test fault switches, not configuration.
        let env = Env::prefixed("NEUROSHARD_")
            .split("__")
            .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("fault_"));
        explicit = cli.into_figment(explicit.merge(env));
        let figment =
            Figment::from(Serialized::defaults(Config::default())).merge(explicit.clone());
        let mut config: Config = figment.extract().map_err(describe)?;
        config.adopt_genesis(|key| explicit.contains(key))?;
        config.validate()?;
        Ok(config)
    }

    /// Loads `network.genesis` and takes the network id, model preset and reward schedule from
    /// it; one set explicitly (`is_explicit`) to another value is an error naming its key.
    fn adopt_genesis(&mut self, is_explicit: impl Fn(&str) -> bool) -> Result<(), ConfigError> {
        let Some(path) = self.network.genesis.clone() else {
            if self.network.membership.is_some() {
                return Err(ConfigError {
                    source_name: "configuration".into(),
                    key: "network.membership".into(),
                    reason: "a membership certificate needs the network's genesis \
                             (network.genesis, --genesis)"
                        .into(),
                });
            }
            return Ok(());
        };
        let genesis = Genesis::load(&path).map_err(|e| ConfigError {
            source_name: e.file,
            key: e.field,
            reason: e.reason,
        })?;
        let conflict = |key: &str, ours: String, theirs: String| ConfigError {
            source_name: "configuration".into(),
            key: key.into(),
            reason: format!(
                "{ours} contradicts the genesis {} ({theirs}); leave it unset to take the genesis's",
                path.display()
            ),
        };
        let n = &mut self.network;
        if is_explicit("network.network_id") && n.network_id != genesis.network_id {
            return Err(conflict(
                "network.network_id",
                format!("{:?}", n.network_id),
                format!("{:?}", genesis.network_id),
            ));
        }
        n.network_id = genesis.network_id.clone();
        if is_explicit("model.preset") && self.model.preset != genesis.preset {
            return Err(conflict(
                "model.preset",
                format!("{:?}", self.model.preset),
                format!("{:?}", genesis.preset),
            ));
        }
        self.model.preset = genesis.preset.clone();
        if is_explicit("ledger.rewards") && self.ledger.rewards != genesis.rewards {
            return Err(conflict(
                "ledger.rewards",
                format!("{:?}", self.ledger.rewards),
                format!("{:?}", genesis.rewards),
            ));
        }
        self.ledger.rewards = genesis.rewards.clone();
        self.genesis = Some(genesis);
        Ok(())
    }

    /// Settings that load but were measured to train worse, each with why; the node logs them
    /// as warnings when it starts.
    pub fn advice(&self) -> Vec<String> {
        let d = &self.diloco;
        let mut advice = Vec::new();
        if d.inner_steps < SHORT_ROUND_STEPS && d.outer_momentum > 0.0 {
            advice.push(format!(
                "diloco.outer_momentum = {} with rounds of {} inner steps: the outer momentum adds \
                 past rounds to steps the inner AdamW momentum already carries; at H = 10 momentum \
                 0.5 trained worse than one node alone and momentum 0 better than H = 50 \
                 (EXPERIMENTS.md, \"Why C trails B at micro\"). Consider outer_momentum = 0 for \
                 rounds shorter than {SHORT_ROUND_STEPS} steps",
                d.outer_momentum, d.inner_steps
            ));
        }
        if self.model.init_weights.is_some()
            && d.outer_momentum_warmup_rounds > 0
            && d.outer_momentum > 0.0
        {
            advice.push(format!(
                "diloco.outer_momentum_warmup_rounds = {} with model.init_weights: the warm-up is \
                 for a network's first rounds from random weights; from a trained start the full \
                 momentum from round 0 ended nearer data-parallel (EXPERIMENTS.md, \"A momentum \
                 warm-up\"). Consider outer_momentum_warmup_rounds = 0",
                d.outer_momentum_warmup_rounds
            ));
        }
        advice
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| {
            Err(ConfigError {
                source_name: "configuration".into(),
                key: key.into(),
                reason,
            })
        };
        let t = &self.training;
        if !PRESETS.contains(&self.model.preset.as_str()) {
            return bad(
                "model.preset",
                format!(
                    "unknown preset {:?} (expected one of {})",
                    self.model.preset,
                    PRESETS.join(", ")
                ),
            );
        }
        if t.batch_size == 0 || t.batch_size > 4096 {
            return bad(
                "training.batch_size",
                format!("{} is not in 1..=4096", t.batch_size),
            );
        }
        if !(t.lr > 0.0 && t.lr < 1.0) {
            return bad("training.lr", format!("{} is not in (0, 1)", t.lr));
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return bad(
                "training.min_lr_ratio",
                format!("{} is not in [0, 1]", t.min_lr_ratio),
            );
        }
        if !(t.val_fraction > 0.0 && t.val_fraction < 0.5) {
            return bad(
                "training.val_fraction",
                format!("{} is not in (0, 0.5)", t.val_fraction),
            );
        }
        for (key, value) in [
            ("training.eval_every", t.eval_every),
            ("training.eval_every_rounds", t.eval_every_rounds),
            ("training.log_every", t.log_every),
            ("training.checkpoint_every", t.checkpoint_every),
            ("diloco.inner_steps", self.diloco.inner_steps),
        ] {
            if value == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if t.eval_sequences == 0 {
            return bad("training.eval_sequences", "must be at least 1".into());
        }
        let d = &self.diloco;
        if d.min_peers == 0 {
            return bad("diloco.min_peers", "must be at least 1".into());
        }
        if !(d.quorum_fraction > 0.0 && d.quorum_fraction <= 1.0) {
            return bad(
                "diloco.quorum_fraction",
                format!("{} is not in (0, 1]", d.quorum_fraction),
            );
        }
        if d.round_deadline_s == 0 {
            return bad("diloco.round_deadline_s", "must be at least 1".into());
        }
        if d.max_delta_norm.is_nan() || d.max_delta_norm <= 0.0 {
            return bad("diloco.max_delta_norm", "must be positive".into());
        }
        if let Err(reason) = d.compression.validate() {
            return bad("diloco.compression", reason);
        }
        if let Err(reason) = d.aggregation.validate() {
            return bad("diloco.aggregation", reason);
        }
        if let Err(reason) = d.sharding.validate() {
            return bad("diloco.sharding", reason);
        }
        if self.diloco.outer_lr.is_nan()
            || self.diloco.outer_lr <= 0.0
            || !(0.0..1.0).contains(&self.diloco.outer_momentum)
        {
            return bad(
                "diloco.outer_lr",
                "outer_lr must be positive and outer_momentum in [0, 1)".into(),
            );
        }
        self.validate_network()?;
        self.validate_ledger()?;
        self.validate_cadence()?;
        for path in &t.data {
            if !path.exists() {
                return bad(
                    "training.data",
                    format!("data path {} does not exist", path.display()),
                );
            }
        }
        Ok(())
    }

    fn validate_ledger(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError {
            source_name: "configuration".into(),
            key: key.into(),
            reason,
        };
        let l = &self.ledger;
        if !(1..=3600).contains(&l.uptime_interval_s) {
            let reason = format!("{} is not in 1..=3600", l.uptime_interval_s);
            return Err(bad("ledger.uptime_interval_s", reason));
        }
        l.rewards.validate().map_err(|r| bad("ledger.rewards", r))?;
        l.limits.validate().map_err(|r| bad("ledger.limits", r))?;
        if l.checkpoint_delay_s < l.limits.freshness_window_s || l.checkpoint_delay_s > MAX_EPOCH_S
        {
            let reason = format!(
                "{} is below ledger.limits.freshness_window_s ({}): events of an epoch could still \
                 arrive after its checkpoint; or above a year",
                l.checkpoint_delay_s, l.limits.freshness_window_s
            );
            return Err(bad("ledger.checkpoint_delay_s", reason));
        }
        if let Some(key) = &self.api_key
            && (key.len() < 16 || key.len() > 256 || self.token.as_deref() == Some(key.as_str()))
        {
            let reason = "must be 16 to 256 characters and not the wallet token".to_string();
            return Err(bad("api_key", reason));
        }
        Ok(())
    }

    fn validate_network(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError {
            source_name: "configuration".into(),
            key: key.into(),
            reason,
        };
        let n = &self.network;
        if !valid_network_id(&n.network_id) {
            return Err(bad(
                "network.network_id",
                format!(
                    "{:?} is not 1 to 64 characters of A-Z a-z 0-9 . _ -",
                    n.network_id
                ),
            ));
        }
        if n.listen.is_empty() {
            return Err(bad("network.listen", "needs at least one multiaddr".into()));
        }
        for (key, addrs) in [
            ("network.listen", &n.listen),
            ("network.announce_addrs", &n.announce_addrs),
            ("seed_peers", &self.seed_peers),
        ] {
            for addr in addrs {
                addr.parse::<Multiaddr>()
                    .map_err(|e| bad(key, format!("{addr:?} is not a multiaddr: {e}")))?;
            }
        }
        if let Some(url) = &self.tracker
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(bad(
                "tracker",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        for (key, value) in [
            ("network.heartbeat_interval_s", n.heartbeat_interval_s),
            ("network.announce_interval_s", n.announce_interval_s),
            ("network.max_blob_mib", n.max_blob_mib),
            ("network.blob_timeout_s", n.blob_timeout_s),
            (
                "network.drop_after_intervals",
                n.drop_after_intervals.into(),
            ),
            (
                "network.ban_after_rejections",
                n.ban_after_rejections.into(),
            ),
        ] {
            if value == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
        }
        Ok(())
    }

    /// Settings of different sections that only work together: rounds long enough to hear peers,
    /// a rate limit an honest node fits under, a quorum the peer table can hold, uptime proofs
    /// the hourly proof limit takes.
    fn validate_cadence(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError {
            source_name: "configuration".into(),
            key: key.into(),
            reason,
        };
        let (d, n, l) = (&self.diloco, &self.network, &self.ledger);
        if d.round_deadline_s < d.straggler_grace_s {
            return Err(bad(
                "diloco.round_deadline_s",
                format!(
                    "{} s is shorter than diloco.straggler_grace_s ({} s): the grace after the \
                     quorum could never run; lower the grace or raise the deadline",
                    d.round_deadline_s, d.straggler_grace_s
                ),
            ));
        }
        if d.round_deadline_s < n.heartbeat_interval_s {
            return Err(bad(
                "diloco.round_deadline_s",
                format!(
                    "{} s is shorter than network.heartbeat_interval_s ({} s): rounds would close \
                     before this node hears which peers train",
                    d.round_deadline_s, n.heartbeat_interval_s
                ),
            ));
        }
        let most_nodes = MAX_PEERS + 1;
        if d.min_peers > most_nodes {
            return Err(bad(
                "diloco.min_peers",
                format!(
                    "{} exceeds the {most_nodes} nodes this node can know (its peer table holds \
                     {MAX_PEERS} peers): no round would reach its quorum",
                    d.min_peers
                ),
            ));
        }
        let uptime_proofs = 3600u64.div_ceil(l.uptime_interval_s);
        if uptime_proofs > u64::from(l.limits.max_proofs_per_hour) {
            return Err(bad(
                "ledger.uptime_interval_s",
                format!(
                    "{} s makes {uptime_proofs} uptime proofs an hour, more than \
                     ledger.limits.max_proofs_per_hour ({}): peers would refuse them",
                    l.uptime_interval_s, l.limits.max_proofs_per_hour
                ),
            ));
        }
        let honest = self.honest_gossip().busiest();
        if let Some(limit) = n.max_messages_per_interval
            && u64::from(limit) < honest
        {
            return Err(bad(
                "network.max_messages_per_interval",
                format!(
                    "{limit} is below the {honest} messages an honest node may gossip in one \
                     heartbeat interval at these settings (network.heartbeat_interval_s, \
                     diloco.inner_steps, ledger.uptime_interval_s, \
                     ledger.limits.max_proofs_per_hour): honest peers would be rate-limited and \
                     banned; unset it to use the limits derived per topic ({:?})",
                    self.honest_gossip().limits()
                ),
            ));
        }
        Ok(())
    }

    /// What an honest node with these settings gossips; the rate limit follows it.
    pub fn honest_gossip(&self) -> HonestGossip {
        HonestGossip {
            heartbeat_interval: Duration::from_secs(self.network.heartbeat_interval_s),
            inner_steps: self.diloco.inner_steps,
            uptime_interval: Duration::from_secs(self.ledger.uptime_interval_s),
            max_proofs_per_hour: self.ledger.limits.max_proofs_per_hour,
        }
    }

    /// Gossip messages one origin may send per heartbeat interval, by topic: the configured
    /// value on every topic, else an honest node's worst case at these settings with headroom.
    pub fn gossip_limits(&self) -> GossipLimits {
        match self.network.max_messages_per_interval {
            Some(limit) => GossipLimits::uniform(limit),
            None => self.honest_gossip().limits(),
        }
    }

    pub fn model_config(&self) -> NeuroLlmConfig {
        NeuroLlmConfig::preset(&self.model.preset).expect("validated preset")
    }

    /// `state_dir` with a leading `~` expanded.
    pub fn state_dir(&self) -> PathBuf {
        let raw = self.state_dir.to_string_lossy();
        match (raw.strip_prefix("~"), std::env::var_os("HOME")) {
            (Some(rest), Some(home)) => PathBuf::from(home).join(rest.trim_start_matches('/')),
            _ => self.state_dir.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn short_rounds_with_outer_momentum_get_advice_and_the_defaults_none() {
        assert!(Config::default().advice().is_empty());
        let mut config = Config::default();
        config.diloco.inner_steps = 10;
        let advice = config.advice();
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert!(advice[0].starts_with("diloco.outer_momentum = 0.7 with rounds of 10"));
        config.diloco.outer_momentum = 0.0;
        assert!(config.advice().is_empty());
    }

    #[test]
    fn a_trained_start_with_a_momentum_warm_up_gets_advice() {
        let mut config = Config::default();
        config.model.init_weights = Some("trained.safetensors".into());
        let advice = config.advice();
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert!(
            advice[0]
                .starts_with("diloco.outer_momentum_warmup_rounds = 4 with model.init_weights")
        );
        config.diloco.outer_momentum_warmup_rounds = 0;
        assert!(config.advice().is_empty());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
    fn layers_apply_in_order_defaults_file_env_cli() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "node.toml",
                "port = 9001\n[training]\nbatch_size = 4\nlr = 0.002\n[diloco]\ninner_steps = 50\n",
            )?;
            jail.set_env("NEUROSHARD_TRAINING__BATCH_SIZE", "16");
            jail.set_env("NEUROSHARD_DILOCO__INNER_STEPS", "70");
            jail.set_env("NEUROSHARD_FAULT_TRAINER_PANIC_AT_STEP", "3");
            let cli = CliOverrides {
                diloco_steps: Some(20),
                ..Default::default()
            };
            let c = Config::load(Some(Path::new("node.toml")), cli).unwrap();
            assert_eq!(c.port, 9001, "file beats default");
            assert_eq!(c.training.lr, 0.002, "file beats default");
            assert_eq!(c.training.batch_size, 16, "env beats file");
            assert_eq!(c.diloco.inner_steps, 20, "CLI beats env");
            assert_eq!(
                c.training.warmup_steps, 100,
                "untouched keys keep their default"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
    fn errors_name_the_file_and_the_key() {
        Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[training]\nbatch_sise = 4\n")?;
            let e =
                Config::load(Some(Path::new("typo.toml")), CliOverrides::default()).unwrap_err();
            assert!(
                e.source_name.contains("typo.toml") && e.reason.contains("batch_sise"),
                "{e}"
            );

            jail.create_file("type.toml", "[training]\nbatch_size = \"many\"\n")?;
            let e =
                Config::load(Some(Path::new("type.toml")), CliOverrides::default()).unwrap_err();
            assert!(
                e.source_name.contains("type.toml") && e.key == "training.batch_size",
                "{e}"
            );

            jail.create_file("preset.toml", "[model]\npreset = \"giant\"\n")?;
            let e =
                Config::load(Some(Path::new("preset.toml")), CliOverrides::default()).unwrap_err();
            assert_eq!(e.key, "model.preset");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment::Error
    fn a_genesis_sets_network_preset_and_rewards_and_contradictions_name_their_key() {
        use crate::admission::{Genesis, Policy};
        use crate::crypto::{Identity, generate_token};
        let authority = Identity::from_token(&generate_token()).unwrap();
        let rewards = RewardSchedule {
            uptime_per_minute: 0.5,
            ..Default::default()
        };
        let genesis = Genesis::new(
            "permnet",
            "nano",
            Policy::Permissioned,
            &[authority.public],
            1,
            rewards.clone(),
            1_800_000_000,
        )
        .unwrap();
        Jail::expect_with(|jail| {
            jail.create_file("genesis.json", &genesis.to_json_pretty())?;
            let with = |cli: CliOverrides| {
                Config::load(
                    None,
                    CliOverrides {
                        genesis: Some("genesis.json".into()),
                        ..cli
                    },
                )
            };
            let c = with(CliOverrides::default()).unwrap();
            assert_eq!(c.network.network_id, "permnet");
            assert_eq!(c.model.preset, "nano");
            assert_eq!(c.ledger.rewards, rewards);
            assert_eq!(c.genesis.as_ref(), Some(&genesis));
            // The same values given explicitly are fine; others name their key.
            let same = with(CliOverrides {
                network_id: Some("permnet".into()),
                preset: Some("nano".into()),
                ..Default::default()
            });
            assert!(same.is_ok());
            let e = with(CliOverrides {
                network_id: Some("othernet".into()),
                ..Default::default()
            })
            .unwrap_err();
            assert_eq!(e.key, "network.network_id", "{e}");
            assert!(e.reason.contains("genesis.json"), "{e}");
            let e = with(CliOverrides {
                preset: Some("micro".into()),
                ..Default::default()
            })
            .unwrap_err();
            assert_eq!(e.key, "model.preset", "{e}");
            jail.set_env("NEUROSHARD_LEDGER__REWARDS__UPTIME_PER_MINUTE", "0.25");
            assert_eq!(
                with(CliOverrides::default()).unwrap_err().key,
                "ledger.rewards"
            );
            jail.clear_env();

            let mut broken = serde_json::to_value(&genesis).unwrap();
            broken["network_id"] = 7.into();
            jail.create_file("broken.json", &broken.to_string())?;
            let e = Config::load(
                None,
                CliOverrides {
                    genesis: Some("broken.json".into()),
                    ..Default::default()
                },
            )
            .unwrap_err();
            assert!(e.source_name.contains("broken.json"), "{e}");
            assert_eq!(e.key, "network_id", "{e}");
            let e = Config::load(
                None,
                CliOverrides {
                    membership: Some("cert.json".into()),
                    ..Default::default()
                },
            )
            .unwrap_err();
            assert_eq!(e.key, "network.membership", "{e}");
            Ok(())
        });
    }

    #[test]
    fn the_documented_default_file_matches_the_built_in_defaults() {
        let text = include_str!("../config/default.toml");
        let from_file: Config = Figment::from(Toml::string(text)).extract().unwrap();
        assert_eq!(from_file, Config::default());
    }

    #[test]
    fn the_three_node_example_is_valid_and_wired_to_node_one() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local-3-nodes");
        let nodes: Vec<Config> = (1..=3)
            .map(|i| {
                let file = dir.join(format!("node{i}.toml"));
                Config::load(Some(&file), CliOverrides::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            })
            .collect();
        let first = &nodes[0].network.listen[0];
        for (i, node) in nodes.iter().enumerate() {
            assert_eq!(node.port, 8001 + i as u16);
            assert_eq!(node.network.network_id, "local");
            if i > 0 {
                assert_eq!(node.seed_peers, std::slice::from_ref(first));
            }
        }
    }

    #[test]
    fn settings_that_cannot_work_together_are_refused_naming_the_key() {
        Config::default().validate().unwrap();
        let refused = |change: &dyn Fn(&mut Config), key: &str, mentions: &str| {
            let mut c = Config::default();
            change(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.key == key && e.reason.contains(mentions), "{e}");
        };
        refused(
            &|c| c.diloco.round_deadline_s = 10,
            "diloco.round_deadline_s",
            "diloco.straggler_grace_s",
        );
        refused(
            &|c| {
                c.network.heartbeat_interval_s = 30;
                c.diloco.round_deadline_s = 20;
            },
            "diloco.round_deadline_s",
            "network.heartbeat_interval_s",
        );
        refused(
            &|c| c.diloco.min_peers = MAX_PEERS + 2,
            "diloco.min_peers",
            "peer table",
        );
        refused(
            &|c| c.diloco.aggregation.bucket_size = 0,
            "diloco.aggregation",
            "bucket_size",
        );
        refused(
            &|c| c.diloco.sharding.redundancy = 1,
            "diloco.sharding",
            "trusted blindly",
        );
        refused(
            &|c| c.ledger.checkpoint_delay_s = 299,
            "ledger.checkpoint_delay_s",
            "freshness_window_s",
        );
        refused(
            &|c| c.ledger.uptime_interval_s = 20,
            "ledger.uptime_interval_s",
            "ledger.limits.max_proofs_per_hour",
        );
        // The old fixed default, 20 a heartbeat interval, banned honest nodes at H = 10.
        refused(
            &|c| {
                c.diloco.inner_steps = 10;
                c.network.max_messages_per_interval = Some(20);
            },
            "network.max_messages_per_interval",
            "diloco.inner_steps",
        );
        // The edges that work are accepted.
        let mut c = Config::default();
        c.diloco.round_deadline_s = c.diloco.straggler_grace_s;
        c.diloco.min_peers = MAX_PEERS + 1;
        c.ledger.uptime_interval_s = 30;
        c.network.max_messages_per_interval =
            Some(u32::try_from(c.honest_gossip().busiest()).unwrap());
        c.validate().unwrap();
    }

    #[test]
    fn the_rate_limit_is_derived_from_the_settings_unless_set() {
        let mut c = Config::default();
        assert_eq!(c.gossip_limits(), c.honest_gossip().limits());
        let default_limits = c.gossip_limits();
        c.diloco.inner_steps = 10;
        assert!(
            c.gossip_limits().round > default_limits.round,
            "shorter rounds, more announcements"
        );
        c.network.max_messages_per_interval = Some(100_000);
        assert_eq!(c.gossip_limits(), GossipLimits::uniform(100_000));
    }
}
