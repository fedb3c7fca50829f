//! `neuroshard`: CLI → Config → node::run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use neuroshard::config::{CliOverrides, Config};
use neuroshard::crypto::{Identity, generate_token};
use neuroshard::node::{self, NodeError};

/// A node of the NeuroShard network: trains NeuroLLM with DiLoCo and serves it at http://localhost:8000.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (see config/default.toml for every key).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Wallet token: 64 hex characters or a 12-word BIP39 mnemonic (also NEUROSHARD_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// File whose first line is the token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Port of the REST API and dashboard.
    #[arg(long)]
    port: Option<u16>,
    /// Address to bind the API to (default 127.0.0.1).
    #[arg(long)]
    host: Option<String>,
    /// Tracker URL, used only to bootstrap peer discovery.
    #[arg(long)]
    tracker: Option<String>,
    /// Comma-separated multiaddrs of peers to bootstrap from.
    #[arg(long, value_delimiter = ',')]
    seed_peers: Option<Vec<String>>,
    /// Comma-separated libp2p listen multiaddrs (default /ip4/0.0.0.0/tcp/9000).
    #[arg(long, value_delimiter = ',')]
    listen: Option<Vec<String>>,
    /// Comma-separated multiaddrs told to peers instead of the listen ones (NAT, public address).
    #[arg(long, value_delimiter = ',')]
    announce_addr: Option<Vec<String>>,
    /// Network to join; peers of another network id are refused.
    #[arg(long)]
    network_id: Option<String>,
    /// Serve the API and the model without training.
    #[arg(long, action = ArgAction::SetTrue, conflicts_with = "training")]
    no_training: bool,
    /// Train (the default; accepted for compatibility).
    #[arg(long, action = ArgAction::SetTrue)]
    training: bool,
    /// H: inner steps between DiLoCo outer synchronisations.
    #[arg(long)]
    diloco_steps: Option<u64>,
    /// Directory for checkpoints and the ledger (default ~/.neuroshard).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Model preset: nano | micro | bootstrap.
    #[arg(long)]
    preset: Option<String>,
    /// Training data: .txt / .jsonl files or directories (repeatable). Default: built-in corpus.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Genesis file of the network to join (`neuroshard network init`); it sets the network id,
    /// model preset and reward schedule.
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// This node's membership certificate (`neuroshard network admit`).
    #[arg(long)]
    membership: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a fresh random token and its node_id.
    Keygen,
    /// Print the node_id of a token.
    Id {
        #[arg(long, env = "NEUROSHARD_TOKEN")]
        token: String,
    },
    /// Run a bootstrap tracker: nodes announce themselves and fetch the peer list; it sees no tokens.
    Tracker {
        /// Port to listen on.
        #[arg(long, default_value_t = 3000)]
        port: u16,
        /// Address to bind to.
        #[arg(long, default_value = "0.0.0.0")]
        host: String,
        /// Seconds a node stays listed after its last announcement.
        #[arg(long, default_value_t = 180)]
        ttl_s: u64,
    },
    /// Print a running node's state (training, DiLoCo round, peers, NEURO) from its API.
    Status {
        /// The node's API address.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
    },
    /// Ask a node for text and vouch for it: sign the receipt for the node's inference proof with
    /// your token's key and post it back, so the node earns for serving you. Prints the text.
    Generate {
        /// The node's API address.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        node: String,
        /// Your wallet token: its key signs the receipt (another key than the node's).
        #[arg(long, env = "NEUROSHARD_TOKEN")]
        token: String,
        /// Bytes (tokens) to generate, 1..=512.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        prompt: String,
    },
    /// Start N nodes on 127.0.0.1 (network id "devnet", nodes 2..N seeded with node 1), print their
    /// URLs and wait; Ctrl-C stops them all. Tokens are kept in STATE_DIR/nodeK/token.
    Devnet {
        /// How many nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
        nodes: u16,
        /// Model preset: nano | micro | bootstrap.
        #[arg(long, default_value = "nano")]
        preset: String,
        /// H: inner steps between DiLoCo outer synchronisations.
        #[arg(long, default_value_t = 50)]
        diloco_steps: u64,
        /// Directory holding node1/ … nodeN/ (state, token, node.log).
        #[arg(long, default_value = "~/.neuroshard/devnet")]
        state_dir: PathBuf,
        /// API ports P..P+N-1 (e.g. 8001); default: free ports picked at start.
        #[arg(long)]
        api_port_base: Option<u16>,
    },
    /// Compare training in one place with DiLoCo across real nodes (and under attack, and with
    /// each delta codec) on validation loss over tokens; writes results.csv, curves.svg, summary.md.
    Experiment(neuroshard::experiment::Options),
    /// Simulate DiLoCo rounds of 10 to 1,000 nodes in one process (the node's own round, heal
    /// and aggregation logic; modelled bandwidth, latency, churn and attackers), full mesh
    /// against sharded aggregation; writes simulation.csv and simulation.svg.
    Simulate(neuroshard::simulate::Options),
    /// Inspect the NEURO ledger of a node's state directory.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Write the model this node trains with the network (θ₀ of its checkpoint, not its own
    /// inner weights) as a Hugging Face Llama directory: config.json, model.safetensors and a
    /// byte-level tokenizer, loadable with transformers' AutoModelForCausalLM and AutoTokenizer.
    Export {
        /// Output format.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(neuroshard::model::export::FORMATS))]
        format: String,
        /// The node's state directory (default: the node's, ~/.neuroshard or --config's).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Directory to create (it may exist if empty).
        out: PathBuf,
    },
    /// Print the next-token logits of θ₀ (the node's checkpoint) after every position of a text,
    /// as JSON {"tokens": [...], "logits": [[...], ...]}, computed by the node's own model code.
    Logits {
        /// The node's state directory (default: the node's, ~/.neuroshard or --config's).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The text (byte tokens, no BOS), at most the model's context length in bytes.
        #[arg(long)]
        text: String,
    },
    /// Define a network (genesis, authority keys) and admit nodes to it.
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Write a new network's genesis file and authority key(s) into DIR.
    Init {
        /// Directory for genesis.json and authority.key (created; existing files are kept).
        #[arg(long)]
        out: PathBuf,
        /// Who counts: permissioned (authorities sign membership certificates) or open.
        #[arg(long, default_value = "permissioned")]
        policy: String,
        #[arg(long, default_value = "mainnet")]
        network_id: String,
        /// Model preset: nano | micro | bootstrap.
        #[arg(long, default_value = "micro")]
        preset: String,
        /// m: authority keys to create (authority.key, or authority-1.key … authority-m.key).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
        authorities: u32,
        /// k: authority signatures a certificate needs (k of m).
        #[arg(long, default_value_t = 1)]
        threshold: u32,
    },
    /// Print a membership certificate (JSON) for a node, signed with an authority key.
    Admit {
        /// The network's genesis file.
        #[arg(long)]
        genesis: PathBuf,
        /// The authority key file (from `network init`).
        #[arg(long)]
        authority_key: PathBuf,
        /// The node_id to admit (32 hex characters, `neuroshard id`).
        #[arg(long)]
        node_id: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
        days: u64,
        /// Comma-separated roles.
        #[arg(long, value_delimiter = ',', default_value = "trainer")]
        roles: Vec<String>,
        /// Add this authority's signature to an existing certificate (k-of-m) instead of issuing a
        /// new one; --days and --roles are then those of the certificate.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Re-verify every stored proof and transaction and recompute every balance from them;
    /// exit 0 only when everything matches (the reward schedule comes from --config).
    Verify {
        /// The node's state directory (holding ledger.sqlite).
        #[arg(long)]
        state_dir: PathBuf,
    },
}

impl Cli {
    fn overrides(&self) -> CliOverrides {
        CliOverrides {
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            host: self.host.clone(),
            port: self.port,
            tracker: self.tracker.clone(),
            seed_peers: self.seed_peers.clone(),
            state_dir: self.state_dir.clone(),
            preset: self.preset.clone(),
            data: (!self.data.is_empty()).then(|| self.data.clone()),
            training: if self.no_training {
                Some(false)
            } else if self.training {
                Some(true)
            } else {
                None
            },
            diloco_steps: self.diloco_steps,
            network_id: self.network_id.clone(),
            listen: self.listen.clone(),
            announce_addrs: self.announce_addr.clone(),
            genesis: self.genesis.clone(),
            membership: self.membership.clone(),
        }
    }
}

impl Command {
    /// Commands that print a result and exit. Rust ignores SIGPIPE, so their `println!` panicked
    /// when the reader went away (`neuroshard keygen | head -1`); they end quietly instead, as
    /// Unix tools do. The node, tracker and devnet keep ignoring it: a peer closing its socket
    /// is an error to handle there, not a reason to die.
    fn prints_and_exits(&self) -> bool {
        matches!(
            self,
            Command::Keygen
                | Command::Id { .. }
                | Command::Status { .. }
                | Command::Generate { .. }
                | Command::Ledger { .. }
                | Command::Network { .. }
                | Command::Export { .. }
                | Command::Logits { .. }
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.as_ref().is_some_and(Command::prints_and_exits) {
        // SAFETY: restores the default disposition of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match &cli.command {
        Some(Command::Keygen) => {
            let token = generate_token();
            let id = Identity::from_token(&token).expect("generated tokens are valid");
            println!("token:   {token}\nnode_id: {}", id.node_id);
            return ExitCode::SUCCESS;
        }
        Some(Command::Id { token }) => {
            return match Identity::from_token(token) {
                Ok(id) => {
                    println!("{}", id.node_id);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: token: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Tracker { port, host, ttl_s }) => {
            if *ttl_s == 0 {
                eprintln!("error: --ttl-s must be at least 1");
                return ExitCode::from(2);
            }
            init_logging("info", None);
            let ttl = std::time::Duration::from_secs(*ttl_s);
            return match actix_rt::System::new()
                .block_on(neuroshard::tracker::run(host, *port, ttl))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: tracker: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Ledger {
            command: LedgerCommand::Verify { state_dir },
        }) => return verify_ledger(&cli, state_dir),
        Some(Command::Status { url }) => return print_status(url),
        Some(Command::Generate {
            node,
            token,
            max_new_tokens,
            prompt,
        }) => {
            return exit_2_on_error(
                generate_with_receipt(node, token, *max_new_tokens, prompt)
                    .map(|text| println!("{text}")),
            );
        }
        Some(Command::Network { command }) => return exit_2_on_error(network_command(command)),
        Some(Command::Export {
            format: _,
            state_dir,
            out,
        }) => {
            return exit_2_on_error(theta0_of(&cli, state_dir.as_ref()).and_then(|theta0| {
                neuroshard::model::export::write_hf(&theta0, out).map_err(|e| e.to_string())?;
                eprintln!(
                    "exported θ₀ of round {} ({} preset, {} parameters) from {} to {}",
                    theta0.round,
                    theta0.preset,
                    theta0.params.len(),
                    theta0.path.display(),
                    out.display()
                );
                Ok(())
            }));
        }
        Some(Command::Logits { state_dir, text }) => {
            return exit_2_on_error(
                theta0_of(&cli, state_dir.as_ref()).and_then(|theta0| print_logits(&theta0, text)),
            );
        }
        Some(Command::Experiment(options)) => return neuroshard::experiment::run(options.clone()),
        Some(Command::Simulate(options)) => return neuroshard::simulate::run(options.clone()),
        Some(Command::Devnet {
            nodes,
            preset,
            diloco_steps,
            state_dir,
            api_port_base,
        }) => {
            return neuroshard::devnet::run(neuroshard::devnet::Options {
                nodes: usize::from(*nodes),
                preset: preset.clone(),
                diloco_steps: *diloco_steps,
                state_dir: state_dir.clone(),
                api_port_base: *api_port_base,
                config: cli.config.clone(),
            });
        }
        None => {}
    }
    let config = match Config::load(cli.config.as_deref(), cli.overrides()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: config: {e}");
            return ExitCode::from(2);
        }
    };
    let logs = neuroshard::logs::LogRing::new(node::LOG_LINES_KEPT);
    init_logging(&config.log_level, Some(logs.clone()));
    ignore_file_size_signal();
    neuroshard::model::backend::keep_freed_memory_in_heap();
    neuroshard::model::backend::lower_compute_pool_priority();
    let result = actix_rt::System::new().block_on(node::run(config, logs));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(NodeError::Input(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(NodeError::Runtime(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A write past the file-size limit (RLIMIT_FSIZE, e.g. set by a quota or a supervisor) raises
/// SIGXFSZ, whose default action kills the process. Ignored, the write fails with EFBIG instead,
/// which the ledger and the checkpoint writer report as a local fault (/api/health degraded) while
/// training and the API go on, and writes resume once the limit allows them: like a full disk.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: sets one signal's disposition to SIG_IGN (no handler runs), before the node's
    // threads start.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Logs to stderr and, for a node, into `ring` (the dashboard's logs tab), through one filter.
fn init_logging(level: &str, ring: Option<neuroshard::logs::LogRing>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Malachite logs every step of every checkpoint round at info; its warnings are what a
    // user needs. A directive in `level` or RUST_LOG naming it comes later and wins.
    let quiet = "informalsystems_malachitebft_core_consensus=warn";
    let filter = EnvFilter::try_new(format!(
        "{quiet},{}",
        std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_string())
    ))
    .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        // A log line that cannot be written (stderr on a full disk) is dropped: the default
        // reports it with eprintln!, which panics the logging thread when stderr fails too. The
        // ring below still holds it for /api/logs.
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .log_internal_errors(false),
        )
        .with(ring.map(neuroshard::logs::RingLayer))
        .init();
}

/// `neuroshard ledger verify`: exit 0 when the ledger is consistent, 1 when it is not, 2 when it
/// cannot be read.
fn verify_ledger(cli: &Cli, state_dir: &std::path::Path) -> ExitCode {
    use neuroshard::ledger::{proof, store, tx};
    let (schedule, network) = match Config::load(cli.config.as_deref(), CliOverrides::default()) {
        Ok(config) => (config.ledger.rewards, config.network.network_id),
        Err(e) => {
            eprintln!("error: config: {e}");
            return ExitCode::from(2);
        }
    };
    let path = state_dir.join(node::LEDGER_FILE);
    if !path.is_file() {
        eprintln!("error: no ledger at {}", path.display());
        return ExitCode::from(2);
    }
    let report = match store::verify_store(
        &path,
        schedule,
        &network,
        |p| proof::check_signature(p).is_ok(),
        |t| tx::check_signature(t).is_ok(),
    ) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_else(|e| e.to_string())
    );
    if report.is_ok() {
        eprintln!(
            "ledger ok: {} proofs, {} transactions, {} accounts recomputed and matching, {} checkpoints holding",
            report.proofs, report.transactions, report.accounts, report.checkpoints
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("ledger verification FAILED (details above)");
        ExitCode::FAILURE
    }
}

fn exit_2_on_error(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// θ₀ of the checkpoint in `state_dir`, or in the state directory the node would use.
fn theta0_of(
    cli: &Cli,
    state_dir: Option<&PathBuf>,
) -> Result<neuroshard::model::export::Theta0, String> {
    let overrides = CliOverrides {
        state_dir: state_dir.or(cli.state_dir.as_ref()).cloned(),
        ..CliOverrides::default()
    };
    let config =
        Config::load(cli.config.as_deref(), overrides).map_err(|e| format!("config: {e}"))?;
    neuroshard::model::export::Theta0::load(&config.state_dir()).map_err(|e| e.to_string())
}

/// `neuroshard logits`: θ₀'s next-token logits after every byte of `text`, as JSON on stdout.
fn print_logits(theta0: &neuroshard::model::export::Theta0, text: &str) -> Result<(), String> {
    use neuroshard::model::{backend::cpu_device, inference, tokenizer};
    let tokens = tokenizer::encode(text);
    let context = theta0.config.max_seq_len;
    if tokens.is_empty() || tokens.len() > context {
        return Err(format!(
            "--text: {} bytes; the model reads 1 to {context}",
            tokens.len()
        ));
    }
    let logits = inference::logits(&theta0.model(), &tokens, &cpu_device());
    let rows: Vec<&[f32]> = logits.chunks(theta0.config.vocab_size).collect();
    println!(
        "{}",
        serde_json::json!({"tokens": tokens, "round": theta0.round, "logits": rows})
    );
    Ok(())
}

/// `neuroshard status`: one screen of a running node's state; exit 1 when it cannot be reached.
/// POST /generate_text, check that the node's inference proof claims what it served (the
/// tokenizer is byte-level: prompt and text bytes), sign its receipt, POST /api/ponw/receipt.
fn generate_with_receipt(
    node: &str,
    token: &str,
    max_new_tokens: usize,
    prompt: &str,
) -> Result<String, String> {
    let identity = Identity::from_token(token).map_err(|e| format!("--token: {e}"))?;
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let base = node.trim_end_matches('/');
    let post = |path: &str, body: serde_json::Value| -> Result<serde_json::Value, String> {
        let mut response = agent
            .post(&format!("{base}{path}"))
            .send_json(body)
            .map_err(|e| format!("{base}{path}: {e}"))?;
        let status = response.status();
        let answer: serde_json::Value = response
            .body_mut()
            .read_json()
            .map_err(|e| format!("{base}{path}: HTTP {status}, not JSON: {e}"))?;
        if status.is_success() {
            Ok(answer)
        } else {
            Err(format!("{base}{path}: HTTP {status}: {answer}"))
        }
    };
    let answer = post(
        "/generate_text",
        serde_json::json!({"prompt": prompt, "max_new_tokens": max_new_tokens}),
    )?;
    let text = answer["text"]
        .as_str()
        .ok_or_else(|| format!("the answer has no text: {answer}"))?
        .to_string();
    let request_id = answer["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let proof: neuroshard::ledger::Proof = serde_json::from_value(answer["proof"].clone())
        .map_err(|e| format!("the answer carries no inference proof to vouch for: {e}"))?;
    let served = (prompt.len() + text.len()) as u64;
    // A receipt vouches for the claim: never sign more than was served.
    if proof.kind != neuroshard::ledger::ProofKind::Inference
        || proof.request_id != request_id
        || proof.tokens != served
    {
        return Err(format!(
            "the node's proof ({:?}, request {:?}, {} tokens) is not the {served} tokens of request \
             {request_id:?} it served; no receipt signed",
            proof.kind, proof.request_id, proof.tokens
        ));
    }
    let receipt = neuroshard::ledger::proof::sign_receipt(&identity, &proof)
        .map_err(|e| format!("cannot sign a receipt for the node's proof: {e}"))?;
    let accepted = post(
        "/api/ponw/receipt",
        serde_json::json!({"request_id": request_id, "receipt": receipt}),
    )?;
    eprintln!(
        "receipt signed by {} for request {request_id}: proof {} {}",
        identity.node_id,
        accepted["proof_id"].as_str().unwrap_or("?"),
        accepted["status"].as_str().unwrap_or("?")
    );
    Ok(text)
}

fn print_status(url: &str) -> ExitCode {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .new_agent();
    let base = url.trim_end_matches('/');
    let get = |path: &str| -> Result<serde_json::Value, String> {
        agent
            .get(&format!("{base}{path}"))
            .call()
            .map_err(|e| e.to_string())?
            .body_mut()
            .read_json()
            .map_err(|e| e.to_string())
    };
    let (stats, diloco, neuro) = match (get("/api/stats"), get("/api/diloco"), get("/api/neuro")) {
        (Ok(s), Ok(d), Ok(n)) => (s, d, n),
        (s, d, n) => {
            let why = [s.err(), d.err(), n.err()].into_iter().flatten().next();
            eprintln!(
                "error: cannot reach the node at {base}: {}",
                why.unwrap_or_default()
            );
            return ExitCode::FAILURE;
        }
    };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let fixed = |v: &serde_json::Value, decimals: usize| {
        v.as_f64()
            .map_or_else(|| text(v), |x| format!("{x:.decimals$}"))
    };
    let rows = [
        (
            "node",
            format!("{} ({})", text(&stats["node_id"]), text(&stats["role"])),
        ),
        ("phase", text(&stats["phase"])),
        (
            "preset",
            format!(
                "{} ({} parameters)",
                text(&stats["preset"]),
                text(&stats["num_params"])
            ),
        ),
        ("step", text(&stats["global_step"])),
        (
            "loss / val_loss",
            format!(
                "{} / {}",
                fixed(&stats["loss"], 4),
                fixed(&stats["val_loss"], 4)
            ),
        ),
        ("tokens/s", fixed(&stats["tokens_per_sec"], 0)),
        (
            "outer round",
            format!(
                "{} (inner {} of {})",
                text(&diloco["outer_step_count"]),
                text(&diloco["inner_step_count"]),
                text(&diloco["inner_steps_total"])
            ),
        ),
        ("θ₀", text(&stats["theta0_hash"])),
        (
            "admission",
            format!(
                "{} (admitted: {}, genesis {})",
                text(&stats["admission"]["policy"]),
                text(&stats["admission"]["admitted"]),
                text(&stats["admission"]["genesis_hash"])
            ),
        ),
        ("peers", text(&stats["peer_count"])),
        (
            "NEURO",
            format!(
                "{} (earned {}, {} proofs)",
                text(&neuro["balance"]),
                text(&neuro["total_earned"]),
                text(&neuro["proof_count"])
            ),
        ),
        ("trainer restarts", text(&stats["trainer_restarts"])),
    ];
    for (name, value) in rows {
        println!("{name:<17} {value}");
    }
    ExitCode::SUCCESS
}

/// `neuroshard network init|admit`; every error names the file (and field) at fault.
fn network_command(command: &NetworkCommand) -> Result<(), String> {
    use neuroshard::admission::{self, Certificate, Genesis, Policy};
    match command {
        NetworkCommand::Init {
            out,
            policy,
            network_id,
            preset,
            authorities,
            threshold,
        } => {
            let policy = Policy::parse(policy)
                .ok_or_else(|| format!("--policy: {policy:?} is not permissioned or open"))?;
            let tokens: Vec<String> = (0..*authorities).map(|_| generate_token()).collect();
            let keys: Vec<_> = tokens
                .iter()
                .map(|t| {
                    Identity::from_token(t)
                        .expect("generated tokens are valid")
                        .public
                })
                .collect();
            let genesis = Genesis::new(
                network_id,
                preset,
                policy,
                &keys,
                *threshold,
                neuroshard::ledger::rewards::RewardSchedule::default(),
                admission::unix_s(),
            )
            .map_err(|e| format!("--{}: {}", e.field.replace('_', "-"), e.reason))?;
            std::fs::create_dir_all(out).map_err(|e| format!("--out {}: {e}", out.display()))?;
            let key_files: Vec<PathBuf> = if tokens.len() == 1 {
                vec![out.join("authority.key")]
            } else {
                (1..=tokens.len())
                    .map(|i| out.join(format!("authority-{i}.key")))
                    .collect()
            };
            let genesis_file = out.join("genesis.json");
            for path in key_files.iter().chain([&genesis_file]) {
                if path.exists() {
                    return Err(format!(
                        "{}: already exists; refusing to overwrite a network's files",
                        path.display()
                    ));
                }
            }
            for (path, token) in key_files.iter().zip(&tokens) {
                write_new(path, &format!("{token}\n"), 0o600)?;
            }
            write_new(
                &genesis_file,
                &format!("{}\n", genesis.to_json_pretty()),
                0o644,
            )?;
            println!("genesis:       {}", genesis_file.display());
            for path in &key_files {
                println!("authority key: {} (keep it secret)", path.display());
            }
            println!("genesis hash:  {}", genesis.hash());
            Ok(())
        }
        NetworkCommand::Admit {
            genesis,
            authority_key,
            node_id,
            days,
            roles,
            cert,
        } => {
            let genesis_file = genesis;
            let genesis = Genesis::load(genesis_file).map_err(|e| e.to_string())?;
            let token = std::fs::read_to_string(authority_key)
                .map_err(|e| format!("{}: cannot read: {e}", authority_key.display()))?;
            let authority = Identity::from_token(token.lines().next().unwrap_or(""))
                .map_err(|e| format!("{}: not an authority key: {e}", authority_key.display()))?;
            if !genesis.is_authority(&authority.public) {
                return Err(format!(
                    "{}: this key ({}) is not one of the authorities of {}",
                    authority_key.display(),
                    hex::encode(authority.public.serialize()),
                    genesis_file.display()
                ));
            }
            let node_id = node_id.trim().to_ascii_lowercase();
            if !admission::valid_node_id(&node_id) {
                return Err(format!(
                    "--node-id: {node_id:?} is not a node_id (32 hex characters, see `neuroshard id`)"
                ));
            }
            let mut certificate = match cert {
                Some(path) => {
                    let existing = Certificate::load(path).map_err(|e| e.to_string())?;
                    if existing.node_id != node_id || existing.genesis_hash != genesis.hash() {
                        return Err(format!(
                            "{}: issued to node {} under genesis {}, not to {node_id} under {}",
                            path.display(),
                            existing.node_id,
                            existing.genesis_hash,
                            genesis_file.display()
                        ));
                    }
                    existing
                }
                None => {
                    let now = admission::unix_s();
                    let mut roles = roles.clone();
                    roles.dedup();
                    Certificate::unsigned(&genesis, &node_id, roles, now, now + days * 86_400)
                }
            };
            certificate.sign(&authority);
            // Everything but the threshold must hold for what this command prints.
            match certificate.check_signatures(&genesis) {
                Ok(()) | Err(admission::CertError::BelowThreshold { .. }) => {}
                Err(e) => return Err(format!("the certificate would not verify: {e}")),
            }
            println!("{}", certificate.to_json_pretty());
            let signed = certificate.signatures.len();
            if signed < genesis.threshold as usize {
                eprintln!(
                    "note: {signed} of the {} signatures the genesis requires; add more with --cert",
                    genesis.threshold
                );
            }
            Ok(())
        }
    }
}

/// Creates `path` (never overwriting) with `mode` on unix.
fn write_new(path: &std::path::Path, contents: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}
