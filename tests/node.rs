//! A real node process: it trains with DiLoCo, serves its API, survives a crashing trainer, and
//! resumes from its checkpoint after SIGTERM.

mod common;

use std::time::Duration;

use common::{Node, f64_of, validation_at_round};

#[test]
fn nano_node_trains_three_outer_rounds_and_val_loss_falls_by_30_percent() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("state"), &["--diloco-steps", "20"], &[]);
    // The trainer evaluates θ₀ at the start of every round: round 3's is 3 outer steps in.
    let mut val = None;
    node.wait_for(
        "the validation of round 3's θ₀",
        Duration::from_secs(240),
        |n| {
            val = validation_at_round(n, 3);
            val.is_some()
        },
    );
    let stats = node.stats();
    let (val, initial) = (val.unwrap(), f64_of(&stats, "initial_val_loss"));
    assert!(
        val <= 0.7 * initial,
        "val_loss {val} is not ≤ 0.7 × initial {initial}"
    );
    assert!(f64_of(&stats, "tokens_per_sec") > 0.0);
    assert_eq!(stats["role"], "trainer");
    assert_eq!(stats["node_id"].as_str().unwrap().len(), 32);
    assert!(
        stats["peer_id"].as_str().unwrap().starts_with("16Uiu2"),
        "secp256k1 PeerId: {stats}"
    );
    assert!(node.terminate().success());
}

#[test]
fn api_answers_with_documented_keys_and_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("state"), &["--diloco-steps", "10"], &[]);
    let stats = node.stats();
    for key in [
        "node_id",
        "role",
        "version",
        "uptime_s",
        "global_step",
        "loss",
        "val_loss",
        "initial_val_loss",
        "tokens_per_sec",
        "trainer_restarts",
    ] {
        assert!(stats.get(key).is_some(), "/api/stats lacks {key}: {stats}");
    }
    // Prometheus: the documented series, in the text format, once the node has trained.
    node.wait_for("a training step", std::time::Duration::from_secs(60), |n| {
        n.stats()["global_step"].as_u64() > Some(0)
    });
    let metrics = node.get_text("/metrics");
    for series in [
        "neuroshard_global_step_total ",
        "neuroshard_loss ",
        "neuroshard_tokens_per_second ",
        "neuroshard_outer_rounds_total ",
        "neuroshard_network_bytes_in_total ",
        "neuroshard_peers ",
        "neuroshard_neuro_balance ",
        "neuroshard_trainer_restarts_total ",
        "neuroshard_ledger_proofs_total ",
    ] {
        assert!(
            metrics.contains(series),
            "/metrics lacks {series:?}:\n{metrics}"
        );
    }
    let diloco = node.get("/api/diloco");
    for key in [
        "enabled",
        "inner_step_count",
        "inner_steps_total",
        "progress",
        "outer_step_count",
    ] {
        assert!(
            diloco.get(key).is_some(),
            "/api/diloco lacks {key}: {diloco}"
        );
    }
    assert_eq!(diloco["inner_steps_total"], 10);
    assert_eq!(diloco["enabled"], true);

    let (status, body) = node.post_raw(
        "/generate_text",
        r#"{"prompt": "The quick ", "max_new_tokens": 12, "temperature": 0.5, "top_k": 10}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body["text"].is_string() && body["prompt"] == "The quick ",
        "{body}"
    );

    for (bad, why) in [
        ("{not json", "malformed JSON"),
        (r#"{"max_new_tokens": 5}"#, "missing prompt"),
        (
            r#"{"prompt": "a", "max_new_tokens": 100000}"#,
            "too many tokens",
        ),
        (
            r#"{"prompt": "a", "temperature": -1}"#,
            "negative temperature",
        ),
        (r#"{"prompt": 7}"#, "wrong type"),
    ] {
        let (status, body) = node.post_raw("/generate_text", bad);
        assert_eq!(status, 400, "{why}: {body}");
        assert!(
            body["error"].is_string() && body["detail"].is_string(),
            "{why}: {body}"
        );
    }
    let huge = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(200_000));
    let (status, body) = node.post_raw("/generate_text", &huge);
    assert!(
        (400..500).contains(&status) && body["error"].is_string(),
        "oversized body: {status} {body}"
    );
    for missing in ["/api/nope", "/api/v1/nope", "/nope"] {
        let (status, body) = node.try_get(missing).unwrap();
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{missing}"
        );
    }
    // A known path asked with another method: 405 naming the one it answers.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    for (path, allowed) in [
        ("/api/stats", "GET"),
        ("/api/v1/stats", "GET"),
        ("/generate_text", "POST"),
    ] {
        let mut resp = agent.put(&node.url(path)).send("").unwrap();
        assert_eq!(resp.status().as_u16(), 405, "PUT {path}");
        assert_eq!(resp.headers()["allow"], allowed, "PUT {path}");
        let body: serde_json::Value = resp.body_mut().read_json().unwrap();
        assert_eq!(body["error"], "method_not_allowed", "PUT {path}");
    }
    // Every API path is also served under /api/v1.
    let v1 = node.get("/api/v1/stats");
    assert_eq!(v1["node_id"], stats["node_id"]);
    assert!(node.get("/api/v1/neuro")["balance"].is_number());

    let page = ureq::get(&node.url("/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    // The dashboard is self-contained: it runs on the node's own event stream, nothing external.
    assert!(page.contains("NeuroShard") && page.contains("/api/events"));
    assert!(!page.contains("<script src") && !page.contains("https://"));
}

/// The blob id of the θ₀ a checkpoint file holds: what /api/diloco's `theta0_hash` says of it.
fn theta0_hash_in(checkpoint: &std::path::Path) -> String {
    let bytes = std::fs::read(checkpoint).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let theta0 = tensors.tensor("diloco.theta0").unwrap();
    neuroshard::net::blob::BlobId::of(theta0.data()).to_string()
}

#[test]
fn sigterm_checkpoints_a_restart_continues_from_it_and_a_new_node_can_start_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let node = Node::start(&state, &["--diloco-steps", "15"], &[]);
    node.wait_for("50 steps", Duration::from_secs(120), |n| {
        n.stats()["global_step"].as_u64().unwrap() >= 50
    });
    let before = node.stats();
    let status = node.terminate();
    assert!(status.success(), "exit status {status:?}");
    let checkpoint = state.join("checkpoints/checkpoint.safetensors");
    assert!(checkpoint.exists());

    // A new node with `model.init_weights` starts the network from that checkpoint's θ₀: its
    // first evaluation is the trained model's, not a random one's.
    let pretrained = dir.path().join("pretrained.safetensors");
    std::fs::copy(&checkpoint, &pretrained).unwrap();
    let fresh = Node::start(
        &dir.path().join("fresh"),
        &["--diloco-steps", "1000"],
        &[(
            "NEUROSHARD_MODEL__INIT_WEIGHTS",
            pretrained.to_str().unwrap(),
        )],
    );
    assert_eq!(
        fresh.get("/api/diloco")["theta0_hash"].as_str().unwrap(),
        theta0_hash_in(&pretrained)
    );
    fresh.wait_for("a first evaluation", Duration::from_secs(60), |n| {
        n.stats()["initial_val_loss"].is_number()
    });
    let (random_start, trained_start) = (
        f64_of(&before, "initial_val_loss"),
        f64_of(&fresh.stats(), "initial_val_loss"),
    );
    assert!(
        trained_start < 0.8 * random_start,
        "started at {trained_start}, a random model at {random_start}"
    );
    assert!(fresh.terminate().success());

    let node = Node::start(&state, &["--diloco-steps", "15"], &[]);
    let after = node.stats();
    let (step_before, step_after) = (
        before["global_step"].as_u64().unwrap(),
        after["global_step"].as_u64().unwrap(),
    );
    assert!(
        step_after >= step_before,
        "global_step went back from {step_before} to {step_after}"
    );
    node.wait_for(
        "a fresh loss after resuming",
        Duration::from_secs(60),
        |n| n.stats()["global_step"].as_u64().unwrap() > step_after + 5,
    );
    let resumed = node.stats();
    let (initial, loss) = (
        f64_of(&resumed, "initial_val_loss"),
        f64_of(&resumed, "loss"),
    );
    assert!(
        loss < 0.8 * initial,
        "loss {loss} jumped back towards the initial {initial}"
    );
    assert!(
        node.get("/api/diloco")["outer_step_count"]
            .as_u64()
            .unwrap()
            >= 3
    );
    assert!(node.terminate().success());
}

/// Runs a node whose trainer panics once in `work` (NEUROSHARD_FAULT_TRAINER_PANIC_IN) at step
/// `at_step` or later, and checks that the supervisor restarts it and training goes on past
/// `go_on_to` while the API answers throughout.
fn the_trainer_restarts_after_a_panic_in(work: &str, at_step: &str, handler: &str, go_on_to: u64) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        &dir.path().join("state"),
        &["--diloco-steps", "10"],
        &[
            ("NEUROSHARD_FAULT_TRAINER_PANIC_AT_STEP", at_step),
            ("NEUROSHARD_FAULT_TRAINER_PANIC_IN", work),
        ],
    );
    let mut health_checks = 0;
    node.wait_for(
        "the trainer to restart and go on",
        Duration::from_secs(120),
        |n| {
            let (status, _) = n
                .try_get("/api/health")
                .expect("API must answer throughout");
            assert_eq!(status, 200);
            health_checks += 1;
            let stats = n.stats();
            stats["trainer_restarts"] == 1 && stats["global_step"].as_u64().unwrap() >= go_on_to
        },
    );
    assert!(health_checks > 1);
    let stats = node.stats();
    let crash = stats["last_crash"].as_str().unwrap();
    assert!(
        crash.contains("injected fault") && crash.contains(handler),
        "{stats}"
    );
    assert_eq!(stats["trainer_restarts"], 1, "the fault fires once");
    assert!(
        ["training", "syncing"].contains(&stats["phase"].as_str().unwrap()),
        "a live trainer's phase: {stats}"
    );
    assert!(node.terminate().success());
}

#[test]
fn a_panicking_trainer_is_restarted_while_the_api_stays_up() {
    the_trainer_restarts_after_a_panic_in("step", "25", "TrainStep", 40);
}

/// Not only a step: a panic while resetting to the round's θ₀ (the StartRound handler, at the end
/// of round 1, step 20) used to end the trainer silently with the status still "syncing".
#[test]
fn a_panic_in_the_reset_to_theta0_restarts_the_trainer_too() {
    the_trainer_restarts_after_a_panic_in("reset", "15", "StartRound", 40);
}
