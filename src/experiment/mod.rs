//! `neuroshard experiment`: does training together match training in one place? The DiLoCo paper's
//! comparison (arXiv 2311.08105, Table 2) at CPU scale, with this product's real nodes:
//!
//! - A1: one worker, as many steps as each DiLoCo worker (the paper's baseline: 1/k of the tokens);
//! - A: one worker, the same tokens as C (k× the steps);
//! - B: synchronous data-parallel with k× batch (one worker with k× batch is the same update:
//!   the gradient averaged over k batches every step);
//! - C: DiLoCo, k nodes over loopback libp2p, mean of the pseudo-gradients, outer Nesterov;
//! - D: C plus Byzantine nodes (one by default: k+1 nodes) under Krum, trimmed mean and the plain
//!   mean, optionally after a pre-aggregator (NNM, bucketing);
//! - E: C with each lossy delta codec.
//!
//! Single-worker runs are the same node with outer lr 1 and no momentum: θ₀ ← θ₀ − (θ₀ − θ_H) =
//! θ_H, so they are plain AdamW (its moments carry over rounds), evaluated every H steps. Every
//! run evaluates the shared θ₀ at each round start on the same held-out sequences; curves are read
//! from node 1's `validation` log lines through /api/logs.

pub mod corpus;
pub mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::devnet::{self, Fleet, NodeSpec};
use report::{Curve, Point};

/// What `neuroshard experiment` was asked for (its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Directory of text files; the default is Debian's `fortunes` (apt-get install fortunes).
    #[arg(long, default_value = "/usr/share/games/fortunes")]
    pub corpus: PathBuf,
    /// Where the results, the corpus in the node's format and every run's node directories go.
    #[arg(long, default_value = "experiment")]
    pub out: PathBuf,
    /// Runs: A1 (one worker, 1/k tokens), A (one worker), B (data-parallel, k× batch),
    /// C (DiLoCo), D (C + a Byzantine node, per rule), E (C, per codec).
    #[arg(long, value_delimiter = ',', default_value = "A1,A,B,C,D,E")]
    pub runs: Vec<String>,
    /// k: DiLoCo workers (and B's batch multiple).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Outer rounds of the DiLoCo runs (each worker trains rounds × H steps).
    #[arg(long, default_value_t = 12)]
    pub rounds: u64,
    /// H: inner steps per round.
    #[arg(long, default_value_t = 50)]
    pub inner_steps: u64,
    /// Sequences per batch of one worker.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value = "nano")]
    pub preset: String,
    /// Seeds (model initialisation and data order); each run is repeated per seed.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// D's attack: sign_flip, scale, gaussian, alie[:Z] (z = 1 unless given), ipm[:EPSILON]
    /// (ε = 0.5 unless given); see NEUROSHARD_FAULT_BYZANTINE.
    #[arg(long, default_value = "sign_flip")]
    pub attack: String,
    /// D's Byzantine nodes, added to the k workers; the rules tolerate f = this many.
    #[arg(long, default_value_t = 1)]
    pub attackers: usize,
    /// D's aggregation rules.
    #[arg(long, value_delimiter = ',', default_value = "krum,trimmed_mean,mean")]
    pub rules: Vec<String>,
    /// D's pre-aggregators (`[diloco.aggregation] pre`): none, nnm, bucketing; each with each rule.
    #[arg(long, value_delimiter = ',', default_value = "none")]
    pub pre: Vec<String>,
    /// E's delta codecs.
    #[arg(long, value_delimiter = ',', default_value = "fp16,int8,top_k")]
    pub codecs: Vec<String>,
    /// Outer learning rate of the DiLoCo runs (the node's default; the paper's is 0.7).
    #[arg(long, default_value_t = 1.0)]
    pub outer_lr: f64,
    /// Outer Nesterov momentum of the DiLoCo runs (the node's default; the paper's is 0.9).
    #[arg(long, default_value_t = 0.7)]
    pub outer_momentum: f64,
    /// Rounds over which the outer momentum grows from 0 (the node's default; the paper's and
    /// the runs of EXPERIMENTS.md before 2026-12-06 have none: 0).
    #[arg(long, default_value_t = 4)]
    pub outer_momentum_warmup_rounds: u64,
    /// Peak AdamW learning rate of every run's inner steps (`[training] lr`); the node's
    /// default (1e-3) unless given.
    #[arg(long)]
    pub inner_lr: Option<f64>,
    /// Evaluate θ₀ at every Nth round start only (`[training] eval_every_rounds`); --rounds must
    /// be a multiple. The curves keep their points at the same tokens: the evaluations do not
    /// change training, only its wall time (at H = 10 on micro they cost as much as the steps).
    #[arg(long, default_value_t = 1)]
    pub eval_every: u64,
    /// Seconds one run may take before the experiment gives up on it.
    #[arg(long, default_value_t = 3600)]
    pub run_timeout: u64,
    /// How the DiLoCo workers' data is split: `iid` (each reads the whole corpus in its own
    /// order) or `topics` (non-i.i.d.: node 1, whose validation loss is the curve, reads the whole
    /// corpus; each other honest worker one part of the corpus's files, whole topics, none of
    /// node 1's held-out documents; attackers the whole corpus).
    #[arg(long, value_enum, default_value_t = Split::Iid)]
    pub split: Split,
    /// Every run starts from the θ₀ of this node checkpoint (`[model] init_weights`), e.g. a
    /// previous run's `runs/A-seed0/node1/checkpoints/checkpoint.safetensors`, instead of a
    /// random initialisation.
    #[arg(long)]
    pub init_weights: Option<PathBuf>,
    /// The DiLoCo runs send each worker's Nesterov direction Δ + μ·m instead of Δ
    /// (`[diloco.aggregation] worker_momentum`).
    #[arg(long)]
    pub worker_momentum: bool,
}

/// The `--split` of the workers' data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    Iid,
    Topics,
}

/// The data files of the runs: the whole corpus, and with `--split topics` one part per honest
/// worker after node 1.
struct DataFiles {
    whole: PathBuf,
    parts: Vec<PathBuf>,
}

impl DataFiles {
    /// What node `index` (0-based) of `run` reads: node 1 and the attackers the whole corpus.
    fn of(&self, run: &RunSpec, index: usize) -> &Path {
        let part = index.checked_sub(1).filter(|_| index < run.honest);
        part.and_then(|part| self.parts.get(part))
            .unwrap_or(&self.whole)
    }
}

/// One training run, fully decided before anything starts.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub id: String,
    pub label: String,
    pub nodes: usize,
    /// Nodes that train honestly: the tokens of a point are theirs.
    pub honest: usize,
    pub batch: usize,
    pub inner_steps: u64,
    pub rounds: u64,
    pub outer_lr: f64,
    pub outer_momentum: f64,
    pub outer_momentum_warmup_rounds: u64,
    /// `[training] lr`, when not the node's default.
    pub inner_lr: Option<f64>,
    /// `[training] eval_every_rounds`: the curve's points.
    pub eval_every_rounds: u64,
    /// `[diloco.aggregation] worker_momentum`.
    pub worker_momentum: bool,
    pub rule: String,
    /// `[diloco.aggregation] pre`.
    pub pre: String,
    /// `[diloco.aggregation] byzantine`: the f the rule tolerates.
    pub byzantine: usize,
    pub codec: String,
    /// The attack of the last `nodes − honest` nodes, if any.
    pub attack: Option<String>,
}

impl RunSpec {
    fn single(id: &str, label: String, batch: usize, o: &Options, rounds: u64) -> Self {
        Self {
            id: id.into(),
            label,
            nodes: 1,
            honest: 1,
            batch,
            inner_steps: o.inner_steps,
            rounds,
            outer_lr: 1.0,
            outer_momentum: 0.0,
            outer_momentum_warmup_rounds: 0,
            inner_lr: o.inner_lr,
            eval_every_rounds: o.eval_every,
            worker_momentum: false,
            rule: "mean".into(),
            pre: "none".into(),
            byzantine: 1,
            codec: "fp32".into(),
            attack: None,
        }
    }

    fn diloco(id: String, label: String, o: &Options) -> Self {
        Self {
            id,
            label,
            nodes: o.workers,
            honest: o.workers,
            batch: o.batch,
            inner_steps: o.inner_steps,
            rounds: o.rounds,
            outer_lr: o.outer_lr,
            outer_momentum: o.outer_momentum,
            outer_momentum_warmup_rounds: o.outer_momentum_warmup_rounds,
            inner_lr: o.inner_lr,
            eval_every_rounds: o.eval_every,
            worker_momentum: o.worker_momentum,
            rule: "mean".into(),
            pre: "none".into(),
            byzantine: 1,
            codec: "fp32".into(),
            attack: None,
        }
    }

    /// The nodes that run the attack: the last ones.
    pub fn attackers(&self) -> usize {
        if self.attack.is_some() {
            self.nodes - self.honest
        } else {
            0
        }
    }

    /// Steps each worker trains: the LR schedule decays over exactly these.
    pub fn steps(&self) -> u64 {
        self.rounds * self.inner_steps
    }

    /// The node settings of this run (NEUROSHARD_* variables), the same for every node.
    pub fn env(&self, seed: u64) -> Vec<(String, String)> {
        let steps = self.steps();
        [
            ("TRAINING__BATCH_SIZE", self.batch.to_string()),
            ("TRAINING__SEED", seed.to_string()),
            ("TRAINING__TOTAL_STEPS", steps.to_string()),
            (
                "TRAINING__WARMUP_STEPS",
                (steps / 10).clamp(1, 100).to_string(),
            ),
            // Only the round-start evaluations of θ₀ (every `eval_every_rounds`): the curve's points.
            ("TRAINING__EVAL_EVERY", (steps * 10).to_string()),
            (
                "TRAINING__EVAL_EVERY_ROUNDS",
                self.eval_every_rounds.to_string(),
            ),
            ("TRAINING__EVAL_SEQUENCES", "256".into()),
            ("TRAINING__CHECKPOINT_EVERY", (steps * 10).to_string()),
            ("TRAINING__LOG_EVERY", "100".into()),
            ("DILOCO__OUTER_LR", self.outer_lr.to_string()),
            ("DILOCO__OUTER_MOMENTUM", self.outer_momentum.to_string()),
            (
                "DILOCO__OUTER_MOMENTUM_WARMUP_ROUNDS",
                self.outer_momentum_warmup_rounds.to_string(),
            ),
            (
                "DILOCO__AGGREGATION__WORKER_MOMENTUM",
                self.worker_momentum.to_string(),
            ),
            // Every round waits for every node it expects (quorum fraction 1). min_peers (half
            // the honest nodes, at least two) only keeps round 0 from closing before the peers
            // are heard: it is weight, not a head count, and a node whose deltas are rejected
            // loses reputation weight (attackers, and honest nodes that Krum does not select),
            // so asking for every node's weight left rounds short of their quorum until the
            // 600 s deadline.
            (
                "DILOCO__MIN_PEERS",
                self.honest.div_ceil(2).max(self.honest.min(2)).to_string(),
            ),
            ("DILOCO__QUORUM_FRACTION", "1.0".into()),
            ("DILOCO__ROUND_DEADLINE_S", "600".into()),
            ("DILOCO__AGGREGATION__RULE", self.rule.clone()),
            ("DILOCO__AGGREGATION__BYZANTINE", self.byzantine.to_string()),
            ("DILOCO__AGGREGATION__PRE", self.pre.clone()),
            ("DILOCO__COMPRESSION__CODEC", self.codec.clone()),
        ]
        .into_iter()
        .chain(self.inner_lr.map(|lr| ("TRAINING__LR", lr.to_string())))
        .map(|(key, value)| (format!("NEUROSHARD_{key}"), value))
        .collect()
    }
}

/// The runs `options` asks for, in order.
pub fn plan_runs(o: &Options) -> Result<Vec<RunSpec>, String> {
    let k = o.workers;
    if k < 2 {
        return Err("--workers must be at least 2".into());
    }
    context_of(&o.preset)?;
    if o.rounds == 0 || o.inner_steps == 0 || o.batch == 0 {
        return Err("--rounds, --inner-steps and --batch must be at least 1".into());
    }
    if o.eval_every == 0 || !o.rounds.is_multiple_of(o.eval_every) {
        return Err(format!(
            "--eval-every {} does not divide --rounds {} (the last round must be evaluated)",
            o.eval_every, o.rounds
        ));
    }
    if o.run_timeout == 0 {
        return Err("--run-timeout must be at least 1 second".into());
    }
    if let Some(lr) = o.inner_lr.filter(|lr| !(*lr > 0.0 && *lr < 1.0)) {
        return Err(format!("--inner-lr {lr} is not in (0, 1)"));
    }
    if o.runs.iter().any(|r| r == "D") {
        check_d_options(o)?;
    }
    let mut runs = Vec::new();
    for group in &o.runs {
        match group.as_str() {
            "A1" => runs.push(RunSpec::single(
                "A1",
                format!(
                    "one worker, batch {}, {} steps (1/{k} of the tokens)",
                    o.batch,
                    o.rounds * o.inner_steps
                ),
                o.batch,
                o,
                o.rounds,
            )),
            "A" => runs.push(RunSpec::single(
                "A",
                format!(
                    "one worker, batch {}, {} steps (same tokens)",
                    o.batch,
                    k as u64 * o.rounds * o.inner_steps
                ),
                o.batch,
                o,
                k as u64 * o.rounds,
            )),
            "B" => runs.push(RunSpec::single(
                "B",
                format!(
                    "data-parallel: batch {k}×{}, gradient averaged every step",
                    o.batch
                ),
                k * o.batch,
                o,
                o.rounds,
            )),
            "C" => runs.push(RunSpec::diloco(
                "C".into(),
                format!("DiLoCo: {k} nodes, H = {}, mean, fp32", o.inner_steps),
                o,
            )),
            "D" => {
                for pre in &o.pre {
                    for rule in &o.rules {
                        let mut run = RunSpec::diloco(d_id(o, pre, rule), d_label(o, pre, rule), o);
                        run.nodes += o.attackers;
                        run.rule = rule.clone();
                        run.pre = pre.clone();
                        run.byzantine = o.attackers;
                        run.attack = Some(o.attack.clone());
                        runs.push(run);
                    }
                }
            }
            "E" => {
                for codec in &o.codecs {
                    let mut run = RunSpec::diloco(
                        format!("E-{codec}"),
                        format!("DiLoCo: {k} nodes, mean, {codec} deltas"),
                        o,
                    );
                    run.codec = codec.clone();
                    runs.push(run);
                }
            }
            other => return Err(format!("--runs: unknown run {other:?} (A1, A, B, C, D, E)")),
        }
    }
    for run in runs.iter_mut().filter(|run| run.nodes > 1) {
        if o.split == Split::Topics {
            run.label += ", data split by topic";
        }
        if run.worker_momentum {
            run.label += ", worker momentum";
        }
    }
    Ok(runs)
}

/// D's options name an attack, pre-aggregators and rules the node knows, and at least one
/// attacker, fewer than the workers (the rules assume an honest majority).
fn check_d_options(o: &Options) -> Result<(), String> {
    use crate::diloco::attack::Attack;
    if Attack::parse(&o.attack).is_none() {
        return Err(format!(
            "--attack: unknown attack {:?} ({})",
            o.attack,
            Attack::NAMES
        ));
    }
    if o.attackers == 0 || o.attackers >= o.workers {
        return Err(format!(
            "--attackers: {} is not in 1..{} (fewer than --workers)",
            o.attackers, o.workers
        ));
    }
    let pres = crate::aggregate::PreAggregation::ALL.map(|p| p.name());
    if let Some(bad) = o.pre.iter().find(|p| !pres.contains(&p.as_str())) {
        return Err(format!(
            "--pre: unknown pre-aggregator {bad:?} ({})",
            pres.join(", ")
        ));
    }
    let rules = crate::aggregate::Rule::ALL.map(|r| r.name());
    if let Some(bad) = o.rules.iter().find(|r| !rules.contains(&r.as_str())) {
        return Err(format!(
            "--rules: unknown rule {bad:?} ({})",
            rules.join(", ")
        ));
    }
    Ok(())
}

/// A D run's id: "D-krum" for the default sign_flip attacker without pre-aggregation, else with
/// what differs, e.g. "D-alie-nnm-krum", "D-ipm-2of8-bucketing-trimmed_mean".
fn d_id(o: &Options, pre: &str, rule: &str) -> String {
    let mut parts = vec!["D".to_string()];
    if o.attack != "sign_flip" {
        parts.push(o.attack.clone());
    }
    if o.attackers != 1 {
        parts.push(format!("{}of{}", o.attackers, o.workers + o.attackers));
    }
    if pre != "none" {
        parts.push(pre.to_string());
    }
    parts.push(rule.to_string());
    parts.join("-")
}

fn d_label(o: &Options, pre: &str, rule: &str) -> String {
    let mut label = format!(
        "DiLoCo: {} nodes + {} {}, {rule}",
        o.workers, o.attackers, o.attack
    );
    if pre != "none" {
        label += &format!(" after {pre}");
    }
    label
}

/// A fixed token per node position, so each node reads the corpus in the same order on a rerun.
fn fixed_token(index: usize) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!(
        "neuroshard experiment node {index}"
    )))
}

/// The command that reproduces one run.
fn command_of(o: &Options, run: &RunSpec, seed: u64) -> String {
    let group = run.id.split('-').next().unwrap_or(&run.id);
    let mut command = format!(
        "neuroshard experiment --corpus {} --runs {group} --workers {} --rounds {} --inner-steps {} --batch {} --preset {} --seeds {seed}",
        o.corpus.display(),
        o.workers,
        o.rounds,
        o.inner_steps,
        o.batch,
        o.preset
    );
    if group != "A" && group != "A1" && group != "B" {
        command += &format!(
            " --outer-lr {} --outer-momentum {} --outer-momentum-warmup-rounds {}",
            run.outer_lr, run.outer_momentum, run.outer_momentum_warmup_rounds
        );
    }
    match group {
        "D" => {
            command += &format!(" --rules {} --attack {}", run.rule, o.attack);
            if o.attackers != 1 {
                command += &format!(" --attackers {}", o.attackers);
            }
            if run.pre != "none" {
                command += &format!(" --pre {}", run.pre);
            }
        }
        "E" => command += &format!(" --codecs {}", run.codec),
        _ => {}
    }
    if o.split == Split::Topics {
        command += " --split topics";
    }
    if run.worker_momentum {
        command += " --worker-momentum";
    }
    if let Some(lr) = run.inner_lr {
        command += &format!(" --inner-lr {lr}");
    }
    if run.eval_every_rounds != 1 {
        command += &format!(" --eval-every {}", run.eval_every_rounds);
    }
    if let Some(path) = &o.init_weights {
        command += &format!(" --init-weights {}", path.display());
    }
    command
}

/// Runs everything; exit 0 when every run finished and the results are written, 2 on bad options.
pub fn run(options: Options) -> ExitCode {
    let runs = match plan_runs(&options) {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("error: experiment: {e}");
            return ExitCode::from(2);
        }
    };
    match run_all(&options, &runs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: experiment: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_all(o: &Options, runs: &[RunSpec]) -> Result<(), String> {
    if let Some(path) = o.init_weights.as_ref().filter(|p| !p.is_file()) {
        return Err(format!("--init-weights {}: no such file", path.display()));
    }
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let whole = o.out.join("corpus.jsonl");
    let corpus = corpus::build_corpus(&o.corpus, &whole)?;
    let stats = &corpus.stats;
    eprintln!(
        "corpus: {} documents, {:.1} MB from {} files in {}",
        stats.documents,
        stats.bytes as f64 / 1e6,
        stats.files,
        o.corpus.display()
    );
    let data = DataFiles {
        parts: match o.split {
            Split::Iid => Vec::new(),
            Split::Topics => write_topic_parts(o, &corpus)?,
        },
        whole,
    };
    devnet::catch_stop_signals();
    let mut curves = Vec::new();
    for seed in &o.seeds {
        for run in runs {
            let curve = run_one(o, run, *seed, &data)?;
            let last = curve.points.last().map_or(f32::NAN, |p| p.val_loss);
            eprintln!(
                "{} seed {seed}: final val loss {last:.4} after {:.0} s",
                run.id, curve.seconds
            );
            curves.push(curve);
            // Written after every run: an interrupted experiment keeps what it measured.
            report::write_csv(&o.out.join("results.csv"), &curves)
                .map_err(|e| format!("results.csv: {e}"))?;
        }
    }
    let title = format!(
        "{} on {}: validation loss over tokens",
        o.preset,
        o.corpus.display()
    );
    report::plot_svg(&o.out.join("curves.svg"), &curves, &title)?;
    let table = report::summary_table(&curves, ("A", "B"));
    std::fs::write(o.out.join("summary.md"), &table).map_err(|e| format!("summary.md: {e}"))?;
    println!("{table}");
    eprintln!(
        "results: {}, {}, {}",
        o.out.join("results.csv").display(),
        o.out.join("curves.svg").display(),
        o.out.join("summary.md").display()
    );
    Ok(())
}

/// `--split topics`: one part of the corpus per honest worker after node 1, written next to the
/// whole corpus.
fn write_topic_parts(o: &Options, corpus: &corpus::Corpus) -> Result<Vec<PathBuf>, String> {
    let documents: Vec<String> = corpus.files.iter().flatten().cloned().collect();
    let held_out_from = crate::model::data::TokenDataset::first_held_out_document(
        &documents,
        context_of(&o.preset)? as usize,
        crate::config::TrainingSection::default().val_fraction,
    );
    let parts = corpus::deal_topics(&corpus.files, held_out_from, o.workers - 1);
    let mut paths = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(format!(
                "--split topics: {} text files give no topic to worker {} of {}",
                corpus.stats.files,
                index + 2,
                o.workers
            ));
        }
        let path = o.out.join(format!("corpus-part{}.jsonl", index + 2));
        corpus::write_documents(&path, part)?;
        eprintln!(
            "  worker {} reads {} documents, {:.1} MB",
            index + 2,
            part.len(),
            part.iter().map(String::len).sum::<usize>() as f64 / 1e6
        );
        paths.push(path);
    }
    Ok(paths)
}

/// One run on fresh state: start its nodes, follow node 1's evaluations until round `rounds`,
/// stop the nodes.
fn run_one(o: &Options, run: &RunSpec, seed: u64, data: &DataFiles) -> Result<Curve, String> {
    // Absolute: the nodes run in their own directories.
    let init_weights = o
        .init_weights
        .as_ref()
        .map(|path| {
            std::path::absolute(path).map_err(|e| format!("--init-weights {}: {e}", path.display()))
        })
        .transpose()?;
    let dir = o.out.join("runs").join(format!("{}-seed{seed}", run.id));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut identities = Vec::new();
    for index in 1..=run.nodes {
        let node_dir = devnet::node_dir(&dir, index);
        std::fs::create_dir_all(&node_dir).map_err(|e| format!("{}: {e}", node_dir.display()))?;
        std::fs::write(node_dir.join("token"), fixed_token(index))
            .map_err(|e| format!("{}: {e}", node_dir.display()))?;
        identities.push(devnet::load_or_create_token(&node_dir)?);
    }
    let network = devnet::Options {
        nodes: run.nodes,
        preset: o.preset.clone(),
        diloco_steps: run.inner_steps,
        state_dir: dir.clone(),
        api_port_base: None,
        config: None,
    };
    let (api_ports, p2p_ports) = devnet::pick_ports(None, run.nodes)?;
    let mut specs: Vec<NodeSpec> = devnet::plan(&network, &identities, &api_ports, &p2p_ports);
    for (index, spec) in specs.iter_mut().enumerate() {
        spec.args
            .extend(["--data".into(), data.of(run, index).into()]);
        spec.env = run.env(seed);
        if let Some(path) = &init_weights {
            let path = path.display().to_string();
            spec.env
                .push(("NEUROSHARD_MODEL__INIT_WEIGHTS".into(), path));
        }
    }
    if let Some(attack) = &run.attack {
        let attackers = run.attackers();
        for spec in specs.iter_mut().rev().take(attackers) {
            spec.env
                .push(("NEUROSHARD_FAULT_BYZANTINE".into(), attack.clone()));
        }
    }
    let context = context_of(&o.preset)?;
    eprintln!(
        "{} seed {seed}: {} ({} node(s))",
        run.id, run.label, run.nodes
    );
    let started = Instant::now();
    let mut fleet = Fleet::start(&specs)?;
    let timeout = Duration::from_secs(o.run_timeout);
    let result = follow(&mut fleet, &specs[0], run, context, started, timeout);
    fleet.stop();
    let (points, bytes_per_round) = result?;
    Ok(Curve {
        run: run.id.clone(),
        label: run.label.clone(),
        seed,
        command: command_of(o, run, seed),
        bytes_sent: (bytes_per_round * run.rounds as f64) as u64,
        seconds: started.elapsed().as_secs_f64(),
        points,
    })
}

/// Polls node 1 until it has evaluated θ₀ after `run.rounds` outer steps, or `timeout` has
/// passed since `started`. Returns the curve and the delta bytes node 1 uploaded per round (mean
/// over the rounds seen).
fn follow(
    fleet: &mut Fleet,
    node: &NodeSpec,
    run: &RunSpec,
    context: u64,
    started: Instant,
    timeout: Duration,
) -> Result<(Vec<Point>, f64), String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let get = |path: &str| -> Option<Value> {
        agent
            .get(&format!("{}{path}", node.url()))
            .call()
            .ok()?
            .body_mut()
            .read_json()
            .ok()
    };
    let mut by_round: BTreeMap<u64, Point> = BTreeMap::new();
    let mut bytes: BTreeMap<u64, u64> = BTreeMap::new();
    let mut after = 0u64;
    let mut reported = 0u64;
    loop {
        if devnet::stop_requested() {
            return Err("interrupted".into());
        }
        if let Some(report) = fleet.exited_on_their_own() {
            return Err(format!("{}: {report}", run.id));
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "{}: not done after {} s (--run-timeout)",
                run.id,
                timeout.as_secs()
            ));
        }
        let path = format!("/api/logs?target=trainer&q=validation&after={after}&limit=500");
        if let Some(body) = get(&path) {
            for line in body["lines"].as_array().into_iter().flatten() {
                after = after.max(line["seq"].as_u64().unwrap_or(0));
                if let Some((step, round, val_loss)) =
                    line["message"].as_str().and_then(parse_validation)
                {
                    // The first evaluation of a round is its θ₀ (a resumed trainer would repeat it).
                    // Tokens that went into this θ₀: a round thrown away by a heal adds none.
                    by_round.entry(round).or_insert(Point {
                        round,
                        step,
                        tokens: round * run.inner_steps * tokens_per_step(run, context),
                        val_loss,
                    });
                }
            }
        }
        if let Some(last) = get("/api/diloco").map(|d| d["last_round"].clone())
            && let (Some(round), Some(sent)) = (last["round"].as_u64(), last["bytes_sent"].as_u64())
        {
            bytes.insert(round, sent);
        }
        let done = by_round.keys().next_back().copied().unwrap_or(0);
        if done >= run.rounds {
            let points: Vec<Point> = by_round
                .into_values()
                .filter(|p| p.round <= run.rounds)
                .collect();
            let per_round = if bytes.is_empty() {
                0.0
            } else {
                bytes.values().sum::<u64>() as f64 / bytes.len() as f64
            };
            return Ok((points, per_round));
        }
        if done > reported && done.is_multiple_of(run.rounds.div_ceil(6).max(1)) {
            reported = done;
            if let Some(point) = by_round.get(&done) {
                eprintln!(
                    "  round {done}/{}: val loss {:.4} ({:.0} s)",
                    run.rounds,
                    point.val_loss,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Tokens per sequence of `preset`.
fn context_of(preset: &str) -> Result<u64, String> {
    crate::model::NeuroLlmConfig::preset(preset)
        .map(|config| config.max_seq_len as u64)
        .ok_or_else(|| format!("--preset: unknown preset {preset:?} (nano, micro, bootstrap)"))
}

/// Tokens one inner step of `run` consumes over its honest workers.
fn tokens_per_step(run: &RunSpec, context: u64) -> u64 {
    (run.batch * run.honest) as u64 * context
}

/// (step, round, val_loss) of a trainer's "validation step=S round=R val_loss=V" log message.
pub fn parse_validation(message: &str) -> Option<(u64, u64, f32)> {
    let field = |name: &str| crate::logs::message_field(message, name);
    if !message.starts_with("validation") {
        return None;
    }
    Some((
        field("step")?.parse().ok()?,
        field("round")?.parse().ok()?,
        field("val_loss")?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(runs: &[&str]) -> Options {
        Options {
            corpus: "/usr/share/games/fortunes".into(),
            out: "/tmp/x".into(),
            runs: runs.iter().map(|r| r.to_string()).collect(),
            workers: 4,
            rounds: 12,
            inner_steps: 50,
            batch: 8,
            preset: "nano".into(),
            seeds: vec![0],
            attack: "sign_flip".into(),
            attackers: 1,
            codecs: vec!["fp16".into(), "int8".into()],
            rules: vec!["krum".into(), "trimmed_mean".into(), "mean".into()],
            pre: vec!["none".into()],
            outer_lr: 0.7,
            outer_momentum: 0.9,
            outer_momentum_warmup_rounds: 0,
            inner_lr: None,
            eval_every: 1,
            run_timeout: 3600,
            split: Split::Iid,
            init_weights: None,
            worker_momentum: false,
        }
    }

    fn tokens(run: &RunSpec) -> u64 {
        run.steps() * tokens_per_step(run, 1)
    }

    #[test]
    fn every_run_but_a1_gets_the_same_token_budget() {
        let runs = plan_runs(&options(&["A1", "A", "B", "C", "D", "E"])).unwrap();
        let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "A1",
                "A",
                "B",
                "C",
                "D-krum",
                "D-trimmed_mean",
                "D-mean",
                "E-fp16",
                "E-int8"
            ]
        );
        let c = tokens(&runs[3]);
        assert_eq!(c, 4 * 12 * 50 * 8);
        for run in &runs[1..] {
            assert_eq!(tokens(run), c, "{}", run.id);
        }
        assert_eq!(tokens(&runs[0]) * 4, c);
        // B takes C's steps with k× batch; A takes k× the steps.
        assert_eq!((runs[2].steps(), runs[2].batch), (600, 32));
        assert_eq!((runs[1].steps(), runs[1].batch), (2400, 8));
    }

    #[test]
    fn single_workers_are_plain_adamw_and_d_adds_one_attacker() {
        let runs = plan_runs(&options(&["A", "D"])).unwrap();
        assert_eq!((runs[0].outer_lr, runs[0].outer_momentum), (1.0, 0.0));
        let d = &runs[1];
        assert_eq!((d.nodes, d.honest, d.rule.as_str()), (5, 4, "krum"));
        assert_eq!(d.attack.as_deref(), Some("sign_flip"));
        let env = d.env(3);
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("NEUROSHARD_DILOCO__MIN_PEERS"), Some("2"));
        assert_eq!(get("NEUROSHARD_TRAINING__SEED"), Some("3"));
        assert_eq!(get("NEUROSHARD_DILOCO__AGGREGATION__RULE"), Some("krum"));
        assert_eq!(get("NEUROSHARD_DILOCO__AGGREGATION__BYZANTINE"), Some("1"));
        assert_eq!(get("NEUROSHARD_DILOCO__AGGREGATION__PRE"), Some("none"));
        assert_eq!(d.attackers(), 1);
        assert_eq!(runs[0].attackers(), 0);
    }

    #[test]
    fn d_takes_an_attack_a_number_of_attackers_and_pre_aggregators() {
        // 2 ALIE attackers of 8, each rule alone and after NNM.
        let mut o = options(&["D"]);
        o.attack = "alie".into();
        o.attackers = 2;
        o.workers = 6;
        o.rules = vec!["krum".into(), "trimmed_mean".into()];
        o.pre = vec!["none".into(), "nnm".into()];
        let runs = plan_runs(&o).unwrap();
        let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "D-alie-2of8-krum",
                "D-alie-2of8-trimmed_mean",
                "D-alie-2of8-nnm-krum",
                "D-alie-2of8-nnm-trimmed_mean"
            ]
        );
        let nnm = &runs[2];
        assert_eq!((nnm.nodes, nnm.honest, nnm.attackers()), (8, 6, 2));
        assert_eq!(nnm.label, "DiLoCo: 6 nodes + 2 alie, krum after nnm");
        let env = nnm.env(0);
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("NEUROSHARD_DILOCO__AGGREGATION__PRE").as_deref(),
            Some("nnm")
        );
        assert_eq!(
            get("NEUROSHARD_DILOCO__AGGREGATION__BYZANTINE").as_deref(),
            Some("2")
        );
        assert_eq!(get("NEUROSHARD_DILOCO__MIN_PEERS").as_deref(), Some("3"));
        let command = command_of(&o, nnm, 0);
        assert!(
            command.contains("--rules krum --attack alie --attackers 2 --pre nnm"),
            "{command}"
        );
        assert_eq!(
            get("NEUROSHARD_DILOCO__AGGREGATION__WORKER_MOMENTUM").as_deref(),
            Some("false")
        );
        o.worker_momentum = true;
        let with_momentum = plan_runs(&o).unwrap().remove(0);
        assert_eq!(
            with_momentum.label,
            "DiLoCo: 6 nodes + 2 alie, krum, worker momentum"
        );
        assert!(with_momentum.env(0).contains(&(
            "NEUROSHARD_DILOCO__AGGREGATION__WORKER_MOMENTUM".into(),
            "true".into()
        )));
        assert!(command_of(&o, &with_momentum, 0).ends_with(" --worker-momentum"));
        // Every run of D has the tokens of C: the attackers' are not counted.
        let c = plan_runs(&options(&["C"])).unwrap().remove(0);
        assert_eq!(tokens(nnm) * 4, tokens(&c) * 6);
        // 1 of 5 with bucketing: the id names what differs from the default.
        let mut o = options(&["D"]);
        o.attack = "ipm".into();
        o.pre = vec!["bucketing".into()];
        o.rules = vec!["median".into()];
        let run = plan_runs(&o).unwrap().remove(0);
        assert_eq!((run.id.as_str(), run.nodes), ("D-ipm-bucketing-median", 5));
        assert!(!command_of(&o, &run, 0).contains("--attackers"));
    }

    #[test]
    fn bad_d_options_are_refused_naming_the_flag() {
        let refused = |edit: fn(&mut Options)| {
            let mut o = options(&["D"]);
            edit(&mut o);
            plan_runs(&o).unwrap_err()
        };
        assert!(refused(|o| o.attackers = 0).starts_with("--attackers:"));
        assert!(refused(|o| o.attackers = 4).starts_with("--attackers:"));
        assert!(refused(|o| o.pre = vec!["knn".into()]).starts_with("--pre:"));
        assert!(refused(|o| o.attack = "nonsense".into()).starts_with("--attack:"));
        assert!(refused(|o| o.rules = vec!["average".into()]).starts_with("--rules:"));
        // Not asked for D: D's flags are not checked.
        let mut c = options(&["C"]);
        c.pre = vec!["knn".into()];
        assert!(plan_runs(&c).is_ok());
    }

    #[test]
    fn bad_runs_are_refused() {
        assert!(
            plan_runs(&options(&["Z"]))
                .unwrap_err()
                .contains("unknown run")
        );
        let mut one = options(&["C"]);
        one.workers = 1;
        assert!(plan_runs(&one).is_err());
        let mut giant = options(&["C"]);
        giant.preset = "giant".into();
        assert!(plan_runs(&giant).unwrap_err().contains("--preset"));
    }

    #[test]
    fn reads_the_trainers_validation_lines() {
        assert_eq!(
            parse_validation("validation step=300 round=6 val_loss=2.3456"),
            Some((300, 6, 2.3456))
        );
        assert_eq!(parse_validation("training step=300 loss=2.1"), None);
        assert_eq!(
            parse_validation("validation step=x round=1 val_loss=1"),
            None
        );
    }

    #[test]
    fn each_run_names_the_command_that_reproduces_it() {
        let o = options(&["D"]);
        let runs = plan_runs(&o).unwrap();
        let command = command_of(&o, &runs[1], 2);
        assert!(command.contains("--runs D "), "{command}");
        assert!(
            command.contains("--rules trimmed_mean --attack sign_flip"),
            "{command}"
        );
        assert!(command.contains("--seeds 2"), "{command}");
        assert_ne!(fixed_token(1), fixed_token(2));
        let o = Options {
            init_weights: Some("pre/checkpoint.safetensors".into()),
            ..options(&["C"])
        };
        let command = command_of(&o, &plan_runs(&o).unwrap()[0], 1);
        assert!(
            command.ends_with(" --init-weights pre/checkpoint.safetensors"),
            "{command}"
        );
    }

    #[test]
    fn an_inner_lr_reaches_every_run_and_its_command() {
        let o = Options {
            inner_lr: Some(5e-4),
            ..options(&["B", "C"])
        };
        for run in plan_runs(&o).unwrap() {
            let lr = ("NEUROSHARD_TRAINING__LR".to_string(), "0.0005".to_string());
            assert!(run.env(0).contains(&lr), "{}", run.id);
            assert!(command_of(&o, &run, 0).ends_with(" --inner-lr 0.0005"));
        }
        let default = plan_runs(&options(&["C"])).unwrap().remove(0);
        assert!(!default.env(0).iter().any(|(k, _)| k.ends_with("__LR")));
        for bad in [0.0, 1.5, f64::NAN] {
            let o = Options {
                inner_lr: Some(bad),
                ..options(&["C"])
            };
            assert!(plan_runs(&o).unwrap_err().starts_with("--inner-lr"));
        }
    }

    #[test]
    fn an_eval_cadence_reaches_every_run_and_must_divide_the_rounds() {
        let o = Options {
            eval_every: 3,
            ..options(&["A", "B", "C"])
        };
        for run in plan_runs(&o).unwrap() {
            let cadence = (
                "NEUROSHARD_TRAINING__EVAL_EVERY_ROUNDS".to_string(),
                "3".to_string(),
            );
            assert!(run.env(0).contains(&cadence), "{}", run.id);
            assert!(command_of(&o, &run, 0).ends_with(" --eval-every 3"));
        }
        let default = plan_runs(&options(&["C"])).unwrap().remove(0);
        assert!(!command_of(&options(&["C"]), &default, 0).contains("--eval-every"));
        for bad in [0, 5] {
            let o = Options {
                eval_every: bad,
                ..options(&["C"])
            };
            assert!(plan_runs(&o).unwrap_err().starts_with("--eval-every"));
        }
    }
}
