//! `neuroshard devnet`: a network of N real nodes on 127.0.0.1 for demos. Each node is this
//! executable re-run as a child process with its own token (kept in DIR/nodeK/token, so node ids
//! survive restarts), state dir, API port and libp2p port; nodes 2..N are seeded with node 1.
//! Ctrl-C or SIGTERM stops them all (SIGTERM, 30 s to checkpoint, then SIGKILL); a node that
//! exits on its own stops the others too. The children get PR_SET_PDEATHSIG, so killing devnet
//! with SIGKILL takes them down as well.
//!
//! [`plan`] is the pure part (ports, arguments, seed address) and is unit-tested without processes.
//! Unix only (signals, process groups); the parent-death signal is Linux's.

use std::ffi::OsString;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::{CliOverrides, Config};
use crate::crypto::{Identity, generate_token};

/// The network id of every devnet node: they never mix with mainnet or `local` peers.
pub const NETWORK_ID: &str = "devnet";
/// How long the nodes get to write their final checkpoint and exit before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(30);
/// Environment every node gets: loopback only, so no multicast discovery (another devnet on the
/// LAN would otherwise be found); plain-text logs, as they go to files.
pub const NODE_ENV: &[(&str, &str)] = &[("NEUROSHARD_NETWORK__MDNS", "false"), ("NO_COLOR", "1")];
/// Heartbeat interval of the nodes unless NEUROSHARD_NETWORK__HEARTBEAT_INTERVAL_S is set: quick,
/// so the dashboards settle within seconds.
const HEARTBEAT_ENV: (&str, &str) = ("NEUROSHARD_NETWORK__HEARTBEAT_INTERVAL_S", "2");

/// What `neuroshard devnet` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub preset: String,
    pub diloco_steps: u64,
    /// Holds node1/ … nodeN/; a leading `~` is the home directory.
    pub state_dir: PathBuf,
    /// API ports base..base+N-1; `None`: free ports picked at start.
    pub api_port_base: Option<u16>,
    /// A config file every node loads (its mDNS and heartbeat keys are overridden, see NODE_ENV).
    pub config: Option<PathBuf>,
}

/// One node of the devnet, fully decided before anything is started.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// 1-based.
    pub index: usize,
    pub dir: PathBuf,
    pub token_file: PathBuf,
    pub log: PathBuf,
    pub node_id: String,
    pub peer_id: String,
    pub api_port: u16,
    pub p2p_port: u16,
    /// /ip4/127.0.0.1/tcp/<p2p_port>/p2p/<peer_id>: what the other nodes dial.
    pub multiaddr: String,
    /// Arguments of the child `neuroshard` process (the executable excluded).
    pub args: Vec<OsString>,
    /// Environment of this node on top of NODE_ENV (e.g. a fault switch for one node).
    pub env: Vec<(String, String)>,
}

impl NodeSpec {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// The line devnet prints for this node.
    pub fn summary(&self) -> String {
        format!(
            "node {}  {}  node_id {}  log {}",
            self.index,
            self.url(),
            self.node_id,
            self.log.display()
        )
    }
}

/// DIR/nodeK (K from 1).
pub fn node_dir(state_dir: &Path, index: usize) -> PathBuf {
    state_dir.join(format!("node{index}"))
}

/// The N node specs: node K lives in DIR/nodeK, answers HTTP on `api_ports[K-1]` and libp2p on
/// `p2p_ports[K-1]`, both on 127.0.0.1; nodes 2..N are seeded with node 1's full multiaddr.
pub fn plan(
    options: &Options,
    identities: &[Identity],
    api_ports: &[u16],
    p2p_ports: &[u16],
) -> Vec<NodeSpec> {
    assert!(
        identities.len() == options.nodes
            && api_ports.len() == options.nodes
            && p2p_ports.len() == options.nodes,
        "one identity, API port and p2p port per node"
    );
    let mut specs: Vec<NodeSpec> = Vec::with_capacity(options.nodes);
    for (i, identity) in identities.iter().enumerate() {
        let index = i + 1;
        let dir = node_dir(&options.state_dir, index);
        let token_file = dir.join("token");
        let peer_id = identity.peer_id().to_string();
        let listen = format!("/ip4/127.0.0.1/tcp/{}", p2p_ports[i]);
        let multiaddr = format!("{listen}/p2p/{peer_id}");
        let mut args: Vec<OsString> = Vec::new();
        if let Some(config) = &options.config {
            args.extend(["--config".into(), config.into()]);
        }
        for (flag, value) in [
            ("--preset", options.preset.clone()),
            ("--diloco-steps", options.diloco_steps.to_string()),
            ("--network-id", NETWORK_ID.to_string()),
            ("--host", "127.0.0.1".to_string()),
            ("--port", api_ports[i].to_string()),
            ("--listen", listen),
        ] {
            args.extend([flag.into(), value.into()]);
        }
        args.extend([
            "--state-dir".into(),
            dir.clone().into(),
            "--token-file".into(),
            token_file.clone().into(),
        ]);
        if let Some(seed) = specs.first() {
            args.extend(["--seed-peers".into(), seed.multiaddr.clone().into()]);
        }
        specs.push(NodeSpec {
            index,
            log: dir.join("node.log"),
            dir,
            token_file,
            node_id: identity.node_id.clone(),
            peer_id,
            api_port: api_ports[i],
            p2p_port: p2p_ports[i],
            multiaddr,
            args,
            env: Vec::new(),
        });
    }
    specs
}

/// `path` with a leading `~` expanded to $HOME.
pub fn expand_home(path: &Path) -> PathBuf {
    let raw = path.to_string_lossy();
    match (raw.strip_prefix('~'), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            PathBuf::from(home).join(rest.trim_start_matches('/'))
        }
        _ => path.to_path_buf(),
    }
}

/// The token in `dir`/token, created (mode 0600) when absent; the node reads it with --token-file
/// and would keep the same file itself, so a devnet node's identity is stable across runs.
pub fn load_or_create_token(dir: &Path) -> Result<Identity, String> {
    let path = dir.join("token");
    let describe = |e: std::io::Error| format!("token file {}: {e}", path.display());
    fs::create_dir_all(dir).map_err(|e| format!("state dir {}: {e}", dir.display()))?;
    let token = match fs::read_to_string(&path) {
        Ok(text) => text.lines().next().unwrap_or("").trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            let token = generate_token();
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options
                .open(&path)
                .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()))
                .map_err(describe)?;
            token
        }
        Err(e) => return Err(describe(e)),
    };
    Identity::from_token(&token).map_err(|e| format!("token file {}: {e}", path.display()))
}

/// (API ports, p2p ports), all distinct. API ports are base..base+N-1 when a base is given (each
/// checked free), otherwise free ones; p2p ports are always free ones. A port is "free" when
/// 127.0.0.1:port can be bound now; the listeners are dropped before the nodes start.
pub fn pick_ports(base: Option<u16>, count: usize) -> Result<(Vec<u16>, Vec<u16>), String> {
    let mut held = Vec::with_capacity(2 * count);
    let mut bind = |port: u16| -> Result<u16, String> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        held.push(listener);
        Ok(port)
    };
    let api = match base {
        Some(base) => {
            if usize::from(base) + count - 1 > usize::from(u16::MAX) || base == 0 {
                return Err(format!(
                    "--api-port-base {base}: ports {base}..{base}+{count} do not fit in 1..=65535"
                ));
            }
            (0..count)
                .map(|i| bind(base + i as u16).map_err(|e| format!("--api-port-base: {e}")))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => (0..count).map(|_| bind(0)).collect::<Result<_, _>>()?,
    };
    let p2p = (0..count).map(|_| bind(0)).collect::<Result<_, _>>()?;
    Ok((api, p2p))
}

/// Runs the devnet until Ctrl-C / SIGTERM (exit 0) or until a node exits on its own (exit 1);
/// exit 2 when it cannot start (bad options, busy ports, unreadable token).
pub fn run(mut options: Options) -> ExitCode {
    options.state_dir = expand_home(&options.state_dir);
    let fail = |message: String| {
        eprintln!("error: devnet: {message}");
        ExitCode::from(2)
    };
    if options.nodes == 0 {
        return fail("--nodes must be at least 1".into());
    }
    // The nodes would refuse a bad preset, H or config file one by one: refuse it once, here.
    let overrides = CliOverrides {
        preset: Some(options.preset.clone()),
        diloco_steps: Some(options.diloco_steps),
        network_id: Some(NETWORK_ID.into()),
        ..CliOverrides::default()
    };
    if let Err(e) = Config::load(options.config.as_deref(), overrides) {
        return fail(format!("config: {e}"));
    }
    let identities: Result<Vec<Identity>, String> = (1..=options.nodes)
        .map(|k| load_or_create_token(&node_dir(&options.state_dir, k)))
        .collect();
    let identities = match identities {
        Ok(ids) => ids,
        Err(e) => return fail(e),
    };
    let (api_ports, p2p_ports) = match pick_ports(options.api_port_base, options.nodes) {
        Ok(ports) => ports,
        Err(e) => return fail(e),
    };
    let specs = plan(&options, &identities, &api_ports, &p2p_ports);
    catch_stop_signals();
    let mut fleet = match Fleet::start(&specs) {
        Ok(fleet) => fleet,
        Err(e) => {
            eprintln!("error: devnet: {e}");
            return ExitCode::FAILURE;
        }
    };
    for spec in &specs {
        println!("{}", spec.summary());
    }
    eprintln!(
        "devnet: {} node(s) on network {NETWORK_ID:?}; Ctrl-C stops them",
        specs.len()
    );
    while !stop_requested() {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(report) = fleet.exited_on_their_own() {
            eprintln!("devnet: {report}\ndevnet: stopping the other nodes");
            fleet.stop();
            return ExitCode::FAILURE;
        }
    }
    eprintln!("devnet: stopping {} node(s)", specs.len());
    fleet.stop();
    ExitCode::SUCCESS
}

/// Set by SIGINT / SIGTERM once [`catch_stop_signals`] ran.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM only set a flag ([`stop_requested`]): the program that started
/// the nodes stops them in order instead of dying and leaving them to their parent-death signal.
pub fn catch_stop_signals() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether SIGINT or SIGTERM arrived since the last call.
pub fn stop_requested() -> bool {
    STOP_REQUESTED.swap(false, Ordering::SeqCst)
}

/// A started node.
struct Running {
    spec: NodeSpec,
    child: Child,
    status: Option<ExitStatus>,
}

/// Child `neuroshard` processes started from [`NodeSpec`]s: devnet's nodes, or one run of
/// `neuroshard experiment`. They die with this process (parent-death signal) and are killed when
/// the fleet is dropped without [`Fleet::stop`].
pub struct Fleet {
    nodes: Vec<Running>,
}

impl Fleet {
    /// Starts one process per spec (this executable); if one cannot start, stops the others.
    /// Call it from the main thread: the parent-death signal fires when the starting thread ends.
    pub fn start(specs: &[NodeSpec]) -> Result<Self, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let mut fleet = Fleet {
            nodes: Vec::with_capacity(specs.len()),
        };
        for spec in specs {
            match spawn(&exe, spec) {
                Ok(child) => fleet.nodes.push(Running {
                    spec: spec.clone(),
                    child,
                    status: None,
                }),
                Err(e) => {
                    fleet.stop();
                    return Err(format!("cannot start node {}: {e}", spec.index));
                }
            }
        }
        Ok(fleet)
    }

    /// Collects the exit status of every node that has exited since the last call: their positions.
    fn reap(&mut self) -> Vec<usize> {
        let mut exited = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.status.is_none() {
                match node.child.try_wait() {
                    Ok(Some(status)) => {
                        node.status = Some(status);
                        exited.push(i);
                    }
                    Ok(None) => {}
                    Err(e) => eprintln!("node {}: {e}", node.spec.index),
                }
            }
        }
        exited
    }

    /// Which nodes exited although nobody stopped them, with their status and the end of their
    /// logs; `None` while all run.
    pub fn exited_on_their_own(&mut self) -> Option<String> {
        let exited = self.reap();
        (!exited.is_empty()).then(|| {
            exited
                .iter()
                .map(|&i| {
                    let node = &self.nodes[i];
                    format!(
                        "node {} exited on its own ({}); its log {} ends:\n{}",
                        node.spec.index,
                        node.status.expect("reaped"),
                        node.spec.log.display(),
                        log_tail(&node.spec.log, 15)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// SIGTERM to every running node, up to GRACE for them to checkpoint and exit, then SIGKILL.
    /// A second Ctrl-C / SIGTERM (see [`catch_stop_signals`]) skips the rest of the wait.
    pub fn stop(&mut self) {
        self.reap();
        for node in self.nodes.iter().filter(|n| n.status.is_none()) {
            send_signal(&node.child, libc::SIGTERM);
        }
        let deadline = Instant::now() + GRACE;
        while self.nodes.iter().any(|n| n.status.is_none()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            self.reap();
            if stop_requested() {
                eprintln!("asked again; killing the nodes still running");
                break;
            }
        }
        for node in &mut self.nodes {
            match node.status {
                Some(status) => eprintln!("node {} exited ({status})", node.spec.index),
                None => {
                    eprintln!(
                        "node {} still running after SIGTERM; sending SIGKILL",
                        node.spec.index
                    );
                    let _ = node.child.kill();
                    node.status = node.child.wait().ok();
                }
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().filter(|n| n.status.is_none()) {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

fn spawn(exe: &Path, spec: &NodeSpec) -> std::io::Result<Child> {
    let log = fs::File::create(&spec.log)?;
    let mut cmd = Command::new(exe);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // The token comes from --token-file; NEUROSHARD_TOKEN would override it in every node.
        .env_remove("NEUROSHARD_TOKEN");
    for (key, value) in NODE_ENV {
        cmd.env(key, value);
    }
    if std::env::var_os(HEARTBEAT_ENV.0).is_none() {
        cmd.env(HEARTBEAT_ENV.0, HEARTBEAT_ENV.1);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    use std::os::unix::process::CommandExt;
    // Its own process group: a Ctrl-C in the terminal reaches only the program that started the
    // nodes, which then stops them in order (instead of every node racing it to exit).
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe, and nothing is allocated between fork
        // and exec (an io::Error from an errno does not allocate).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before prctl took effect: do not outlive it.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    cmd.spawn()
}

fn send_signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill has no memory effects; the pid is our own unreaped child, so it is not reused.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(nodes: usize) -> Options {
        Options {
            nodes,
            preset: "nano".into(),
            diloco_steps: 50,
            state_dir: PathBuf::from("/tmp/dn"),
            api_port_base: Some(8001),
            config: None,
        }
    }

    fn identities(n: usize) -> Vec<Identity> {
        (1..=n)
            .map(|i| Identity::from_token(&format!("{i:064x}")).unwrap())
            .collect()
    }

    fn args(spec: &NodeSpec) -> Vec<String> {
        spec.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn flag(spec: &NodeSpec, name: &str) -> Option<String> {
        let args = args(spec);
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1).cloned()
    }

    #[test]
    fn plan_gives_each_node_its_ports_dir_token_and_node_one_as_seed() {
        let ids = identities(3);
        let specs = plan(
            &options(3),
            &ids,
            &[8001, 8002, 8003],
            &[40001, 40002, 40003],
        );
        assert_eq!(specs.len(), 3);
        let seed = format!("/ip4/127.0.0.1/tcp/40001/p2p/{}", ids[0].peer_id());
        assert_eq!(specs[0].multiaddr, seed);
        for (i, spec) in specs.iter().enumerate() {
            let k = i + 1;
            assert_eq!(spec.index, k);
            assert_eq!(spec.node_id, ids[i].node_id);
            assert_eq!(spec.url(), format!("http://127.0.0.1:{}", 8000 + k));
            assert_eq!(spec.dir, PathBuf::from(format!("/tmp/dn/node{k}")));
            assert_eq!(spec.log, spec.dir.join("node.log"));
            let expect = [
                ("--port", format!("{}", 8000 + k)),
                ("--host", "127.0.0.1".into()),
                ("--listen", format!("/ip4/127.0.0.1/tcp/{}", 40000 + k)),
                ("--network-id", "devnet".into()),
                ("--preset", "nano".into()),
                ("--diloco-steps", "50".into()),
                ("--state-dir", format!("/tmp/dn/node{k}")),
                ("--token-file", format!("/tmp/dn/node{k}/token")),
            ];
            for (name, value) in expect {
                assert_eq!(flag(spec, name).as_deref(), Some(value.as_str()), "{name}");
            }
            let seeds = flag(spec, "--seed-peers");
            assert_eq!(seeds, (k > 1).then(|| seed.clone()), "node {k}");
            assert_eq!(flag(spec, "--config"), None);
        }
        assert!(specs[1].summary().starts_with(&format!(
            "node 2  http://127.0.0.1:8002  node_id {}",
            ids[1].node_id
        )));
    }

    #[test]
    fn plan_passes_the_config_file_and_a_single_node_has_no_seed() {
        let mut o = options(1);
        o.config = Some(PathBuf::from("my.toml"));
        let specs = plan(&o, &identities(1), &[5000], &[5001]);
        assert_eq!(flag(&specs[0], "--config").as_deref(), Some("my.toml"));
        assert_eq!(flag(&specs[0], "--seed-peers"), None);
    }

    #[test]
    fn tokens_are_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node1");
        let first = load_or_create_token(&node).unwrap();
        let again = load_or_create_token(&node).unwrap();
        assert_eq!(first.node_id, again.node_id);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(node.join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(node.join("token"), "garbage\n").unwrap();
        let e = load_or_create_token(&node).unwrap_err();
        assert!(e.contains("token file") && e.contains("node1"), "{e}");
    }

    #[test]
    fn picked_ports_are_distinct_and_a_busy_base_is_refused() {
        let (api, p2p) = pick_ports(None, 3).unwrap();
        let mut all: Vec<u16> = api.iter().chain(&p2p).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6);

        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let e = pick_ports(Some(port), 2).unwrap_err();
        assert!(e.contains(&port.to_string()), "{e}");
        assert!(pick_ports(Some(65535), 2).is_err());
    }

    #[test]
    fn home_is_expanded() {
        let Some(home) = std::env::var_os("HOME") else {
            return;
        };
        assert_eq!(
            expand_home(Path::new("~/.neuroshard/devnet")),
            PathBuf::from(home).join(".neuroshard/devnet")
        );
        assert_eq!(expand_home(Path::new("/x/~y")), PathBuf::from("/x/~y"));
    }
}
