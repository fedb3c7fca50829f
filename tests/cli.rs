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
    let missing_data = dir.path().join("no-such-corpus.txt");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let busy_p2p = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_p2p_port = busy_p2p.local_addr().unwrap().port();
    let blocker = write("not-a-dir", "a file where the state dir should be");

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
