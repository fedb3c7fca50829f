//! The command line as a user meets it: identity subcommands and clear exits on bad input.

mod common;

use std::process::{Command, Output};

use common::BIN;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn id_prints_the_known_node_id_and_keygen_a_working_token() {
    let out = run(
        &[
            "id",
            "--token",
            "c7bcca42c5583383e4933fac637e10e9504b8e67346e87b1702e97fe0d1794ec",
        ],
        &[],
    );
    assert!(out.status.success());
    assert_eq!(stdout(&out), "f99a98e479263f0a28a91c4809fe5910");

    let mnemonic = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
    let out = run(&["id"], &[("NEUROSHARD_TOKEN", mnemonic)]);
    assert_eq!(stdout(&out), "d72992fd962a53bbab62f8710b11e0f7");

    let out = run(&["keygen"], &[]);
    let text = stdout(&out);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    let (token, node_id) = (field("token:"), field("node_id:"));
    let again = run(&["id", "--token", &token], &[]);
    assert_eq!(stdout(&again), node_id);
}

/// `neuroshard keygen | head -1` and the like: a reader that went away ends the command quietly
/// (SIGPIPE, as for any Unix tool), never with a panic.
#[test]
fn a_closed_stdout_ends_a_printing_command_without_a_panic() {
    for args in [
        &["keygen"][..],
        &[
            "id",
            "--token",
            "c7bcca42c5583383e4933fac637e10e9504b8e67346e87b1702e97fe0d1794ec",
        ],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let text = stderr(&out);
        assert!(!text.contains("panicked"), "{args:?}: {text}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {text}");
    }
}

/// Each bad input exits with 2, names what is wrong, and writes nothing into the state dir.
#[test]
fn bad_input_exits_2_naming_the_file_and_key_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap().to_string();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let unknown_key = write("unknown.toml", "[training]\nbatch_sise = 4\n");
    let wrong_type = write("type.toml", "port = \"eighty\"\n");
    let unknown_pre = write("pre.toml", "[diloco.aggregation]\npre = \"knn\"\n");
    let no_buckets = write("buckets.toml", "[diloco.aggregation]\nbucket_size = 0\n");
    let missing_data = dir.path().join("no-such-corpus.txt");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let busy_p2p = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_p2p_port = busy_p2p.local_addr().unwrap().port();
    let blocker = write("not-a-dir", "a file where the state dir should be");
    let absent_weights = dir.path().join("absent.safetensors");
    let no_weights = write(
        "init.toml",
        &format!("[model]\ninit_weights = {:?}\n", absent_weights),
    );
    let not_a_checkpoint = write("weights.safetensors", "not a safetensors file");
    let bad_weights = write(
        "bad-init.toml",
        &format!("[model]\ninit_weights = {not_a_checkpoint:?}\n"),
    );

    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec![
                "--config".into(),
                unknown_key,
                "--state-dir".into(),
                state_arg.clone(),
            ],
            vec!["unknown.toml", "batch_sise"],
        ),
        (
            vec![
                "--config".into(),
                wrong_type,
                "--state-dir".into(),
                state_arg.clone(),
            ],
            vec!["type.toml", "port"],
        ),
        (
            vec![
                "--config".into(),
                unknown_pre,
                "--state-dir".into(),
                state_arg.clone(),
            ],
            vec!["pre.toml", "diloco.aggregation.pre", "knn", "bucketing"],
        ),
        (
            vec![
                "--config".into(),
                no_buckets,
                "--state-dir".into(),
                state_arg.clone(),
            ],
            vec!["diloco.aggregation", "bucket_size: must be at least 1"],
        ),
        (
            vec![
                "--config".into(),
                no_weights,
                "--state-dir".into(),
                state_arg.clone(),
            ],
            vec!["model.init_weights", "absent.safetensors", "does not exist"],
        ),
        (
            vec![
                "--config".into(),
                bad_weights,
                "--state-dir".into(),
                state_arg.clone(),
            ],
            vec!["model.init_weights", "weights.safetensors", "corrupt"],
        ),
        (
            vec![
                "--data".into(),
                missing_data.to_str().unwrap().into(),
                "--state-dir".into(),
                state_arg.clone(),
            ],
            vec!["training.data", "no-such-corpus.txt"],
        ),
        (
            vec![
                "--token".into(),
                "not-a-token".into(),
                "--preset".into(),
                "nano".into(),
                "--state-dir".into(),
                state_arg.clone(),
            ],
            vec!["token"],
        ),
        (
            vec![
                "--config".into(),
                dir.path().join("absent.toml").to_str().unwrap().into(),
            ],
            vec!["absent.toml", "not found"],
        ),
        (
            vec![
                "--preset".into(),
                "nano".into(),
                "--state-dir".into(),
                format!("{blocker}/state"),
            ],
            vec!["state dir", "not-a-dir"],
        ),
        (
            vec![
                "--preset".into(),
                "nano".into(),
                "--port".into(),
                busy_port,
                "--state-dir".into(),
                state_arg.clone(),
            ],
            vec!["port", "cannot listen"],
        ),
        (
            vec![
                "--port".into(),
                "0".into(),
                "--listen".into(),
                format!("/ip4/127.0.0.1/tcp/{busy_p2p_port}"),
                "--state-dir".into(),
                state_arg.clone(),
            ],
            vec!["network.listen", "cannot listen"],
        ),
        (
            vec!["--listen".into(), "127.0.0.1:9000".into()],
            vec!["network.listen", "not a multiaddr"],
        ),
        (
            vec!["--seed-peers".into(), "/ip4/1.2.3.4/tcp/x".into()],
            vec!["seed_peers", "not a multiaddr"],
        ),
        (
            vec!["--network-id".into(), "main/net".into()],
            vec!["network.network_id"],
        ),
        (
            vec!["--tracker".into(), "tracker.example:3000".into()],
            vec!["tracker", "http://"],
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args, &[]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} exited with {:?}: {err}",
            out.status
        );
        for word in expected {
            assert!(
                err.contains(word),
                "{args:?}: message lacks {word:?}: {err}"
            );
        }
        assert!(!state.exists(), "{args:?} wrote into the state dir");
    }
}

#[test]
fn status_prints_a_running_node_and_fails_clearly_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(&dir.path().join("n"), &["--diloco-steps", "10"], &[]);
    let node_id = node.stats()["node_id"].as_str().unwrap().to_string();
    let out = run(&["status", "--url", &node.url("")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in ["node", "outer round", "NEURO", "peers"] {
        assert!(text.contains(line), "status lacks {line:?}:\n{text}");
    }
    assert!(text.contains(&node_id), "{text}");

    let port = common::free_port();
    let out = run(
        &["status", "--url", &format!("http://127.0.0.1:{port}")],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the node"),
        "{}",
        stderr(&out)
    );
}

/// `network init` in `dir` with `extra` flags: (genesis.json, the authority key files).
fn network_init(dir: &std::path::Path, extra: &[&str]) -> (String, Vec<String>) {
    let out_dir = dir.to_str().unwrap();
    let out = run(
        &[&["network", "init", "--out", out_dir], extra].concat(),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let genesis = text
        .lines()
        .find_map(|l| l.strip_prefix("genesis:"))
        .unwrap()
        .trim()
        .to_string();
    let keys = text
        .lines()
        .filter_map(|l| l.strip_prefix("authority key:"))
        .map(|l| l.trim().trim_end_matches(" (keep it secret)").to_string())
        .collect();
    (genesis, keys)
}

fn node_id_of(token: &str) -> String {
    stdout(&run(&["id", "--token", token], &[]))
}

#[test]
fn network_init_and_admit_issue_certificates_that_verify_for_the_node() {
    use neuroshard::admission::{CertError, Certificate, Genesis, Policy, unix_s, verify};
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    let (genesis_file, keys) = network_init(&net, &["--preset", "nano", "--network-id", "permnet"]);
    assert_eq!(keys.len(), 1);
    assert!(keys[0].ends_with("authority.key") && genesis_file.ends_with("genesis.json"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let genesis = Genesis::load(std::path::Path::new(&genesis_file)).unwrap();
    assert_eq!(genesis.policy, Policy::Permissioned, "the default policy");
    assert_eq!(
        (genesis.network_id.as_str(), genesis.preset.as_str()),
        ("permnet", "nano")
    );
    // The printed hash is the file's.
    let again = run(&["network", "init", "--out", net.to_str().unwrap()], &[]);
    assert_eq!(again.status.code(), Some(2), "init refuses to overwrite");
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let node_id = node_id_of("c7bcca42c5583383e4933fac637e10e9504b8e67346e87b1702e97fe0d1794ec");
    assert_eq!(node_id, "f99a98e479263f0a28a91c4809fe5910");
    let admit = |args: &[&str]| {
        run(
            &[
                &[
                    "network",
                    "admit",
                    "--genesis",
                    &genesis_file,
                    "--authority-key",
                    &keys[0],
                ],
                args,
            ]
            .concat(),
            &[],
        )
    };
    let out = admit(&["--node-id", &node_id, "--days", "7"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cert = Certificate::from_json(&stdout(&out)).unwrap();
    assert_eq!(cert.node_id, node_id);
    assert_eq!(cert.roles, vec!["trainer".to_string()]);
    assert_eq!(cert.expires_at_s - cert.issued_at_s, 7 * 86_400);
    assert_eq!(verify(unix_s(), &genesis, &cert, &node_id), Ok(()));
    assert!(matches!(
        verify(
            unix_s(),
            &genesis,
            &cert,
            "0123456789abcdef0123456789abcdef"
        ),
        Err(CertError::WrongNode { .. })
    ));

    // Bad inputs exit 2 and name what is wrong.
    let garbage_key = dir.path().join("garbage.key");
    std::fs::write(&garbage_key, "not a key\n").unwrap();
    let stranger_key = dir.path().join("stranger.key");
    std::fs::write(&stranger_key, format!("{:064x}\n", 7)).unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&genesis_file)
            .unwrap()
            .replace("\"threshold\": 1", "\"threshold\": 5"),
    )
    .unwrap();
    let not_hex = "z".repeat(32);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--node-id", "f99a98e4"], vec!["--node-id"]),
        (vec!["--node-id", &not_hex], vec!["--node-id"]),
        (vec!["--node-id", &node_id, "--roles", "king"], vec!["role"]),
    ];
    for (args, words) in cases {
        let out = admit(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        for word in words {
            assert!(stderr(&out).contains(word), "{args:?}: {}", stderr(&out));
        }
    }
    let with = |genesis: &str, key: &str| {
        run(
            &[
                "network",
                "admit",
                "--genesis",
                genesis,
                "--authority-key",
                key,
                "--node-id",
                &node_id,
            ],
            &[],
        )
    };
    let absent = dir.path().join("absent.key");
    for (genesis, key, words) in [
        (
            genesis_file.as_str(),
            absent.to_str().unwrap(),
            vec!["absent.key", "cannot read"],
        ),
        (
            genesis_file.as_str(),
            garbage_key.to_str().unwrap(),
            vec!["garbage.key"],
        ),
        (
            genesis_file.as_str(),
            stranger_key.to_str().unwrap(),
            vec!["stranger.key", "not one of the authorities"],
        ),
        (
            broken.to_str().unwrap(),
            keys[0].as_str(),
            vec!["broken.json", "threshold"],
        ),
    ] {
        let out = with(genesis, key);
        assert_eq!(out.status.code(), Some(2), "{key}: {}", stderr(&out));
        for word in words {
            assert!(stderr(&out).contains(word), "{word}: {}", stderr(&out));
        }
    }

    // 2-of-2: one signature is not enough; the second authority adds its own with --cert.
    let net2 = dir.path().join("net2");
    let (genesis2, keys2) = network_init(
        &net2,
        &["--preset", "nano", "--authorities", "2", "--threshold", "2"],
    );
    assert_eq!(keys2.len(), 2);
    let genesis2_parsed = Genesis::load(std::path::Path::new(&genesis2)).unwrap();
    let first = run(
        &[
            "network",
            "admit",
            "--genesis",
            &genesis2,
            "--authority-key",
            &keys2[0],
            "--node-id",
            &node_id,
        ],
        &[],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("1 of the 2"), "{}", stderr(&first));
    let half = Certificate::from_json(&stdout(&first)).unwrap();
    assert!(matches!(
        verify(unix_s(), &genesis2_parsed, &half, &node_id),
        Err(CertError::BelowThreshold {
            valid: 1,
            threshold: 2
        })
    ));
    let half_file = dir.path().join("half.json");
    std::fs::write(&half_file, stdout(&first)).unwrap();
    let second = run(
        &[
            "network",
            "admit",
            "--genesis",
            &genesis2,
            "--authority-key",
            &keys2[1],
            "--node-id",
            &node_id,
            "--cert",
            half_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(second.status.success(), "{}", stderr(&second));
    let full = Certificate::from_json(&stdout(&second)).unwrap();
    assert_eq!(verify(unix_s(), &genesis2_parsed, &full, &node_id), Ok(()));
}

/// A node given a genesis refuses to start with a certificate that does not admit it, or with a
/// flag that contradicts the genesis: exit 2, naming the file or the key, nothing written.
#[test]
fn a_node_with_a_bad_or_expired_membership_or_a_contradicting_flag_exits_2() {
    use neuroshard::admission::{Certificate, Genesis, unix_s};
    use neuroshard::crypto::Identity;
    let dir = tempfile::tempdir().unwrap();
    let (genesis_file, keys) = network_init(&dir.path().join("net"), &["--preset", "nano"]);
    let genesis = Genesis::load(std::path::Path::new(&genesis_file)).unwrap();
    let token = format!("{:064x}", 42);
    let node_id = node_id_of(&token);
    let authority =
        Identity::from_token(std::fs::read_to_string(&keys[0]).unwrap().trim()).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let now = unix_s();
    let mut expired = Certificate::unsigned(
        &genesis,
        &node_id,
        vec!["trainer".into()],
        now - 10 * 86_400,
        now - 86_400,
    );
    expired.sign(&authority);
    let expired = write("expired.json", &expired.to_json_pretty());
    let mut other = Certificate::unsigned(
        &genesis,
        &node_id_of(&format!("{:064x}", 43)),
        vec!["trainer".into()],
        now,
        now + 86_400,
    );
    other.sign(&authority);
    let other = write("other.json", &other.to_json_pretty());
    let garbage = write("garbage.json", "{\"node_id\": 5}");
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let base = [
        "--token",
        token.as_str(),
        "--state-dir",
        state_arg,
        "--genesis",
        genesis_file.as_str(),
    ];
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--membership", &expired],
            vec!["network.membership", "expired.json", "expired at"],
        ),
        (
            vec!["--membership", &other],
            vec!["network.membership", "other.json", "issued to node"],
        ),
        (
            vec!["--membership", &garbage],
            vec!["garbage.json", "network_id"],
        ),
        (
            vec!["--network-id", "othernet"],
            vec!["network.network_id", "genesis.json"],
        ),
        (
            vec!["--preset", "micro"],
            vec!["model.preset", "genesis.json"],
        ),
    ];
    for (extra, words) in cases {
        let args = [&base[..], &extra].concat();
        let out = run(&args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        for word in words {
            assert!(
                err.contains(word),
                "{extra:?}: message lacks {word:?}: {err}"
            );
        }
        assert!(!state.exists(), "{extra:?} wrote into the state dir");
    }
    let out = run(
        &[
            "--token",
            &token,
            "--state-dir",
            state_arg,
            "--membership",
            &expired,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("network.membership"),
        "{}",
        stderr(&out)
    );
}

/// `neuroshard simulate` as the README runs it, on a size that fits a test: a CSV row per mode,
/// size and round, a plot, the summary table; a bad flag exits 2 naming it.
#[test]
fn simulate_writes_a_csv_and_a_plot_comparing_full_mesh_and_sharded() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("sim");
    let out = run(
        &[
            "simulate",
            "--nodes",
            "8,24",
            "--rounds",
            "3",
            "--params",
            "2000",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = std::fs::read_to_string(out_dir.join("simulation.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 2 * 2 * 3, "{csv}");
    for mode in ["full_mesh", "sharded"] {
        for nodes in ["8", "24"] {
            let these: Vec<_> = rows
                .iter()
                .filter(|r| r[0] == mode && r[1] == nodes)
                .collect();
            assert_eq!(these.len(), 3, "{mode} {nodes}: {csv}");
            assert!(
                these.iter().all(|r| r[5] == "true"),
                "every round closes: {csv}"
            );
        }
    }
    let svg = std::fs::read_to_string(out_dir.join("simulation.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("sharded"));
    assert!(
        stdout(&out).contains("| sharded | 24 |"),
        "{}",
        stdout(&out)
    );

    let out = run(&["simulate", "--attackers", "0.6"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--attackers"), "{}", stderr(&out));
}
