//! The dashboard as a person sees it: headless Chromium (Debian's chromium and chromium-driver,
//! driven by tests/python/dashboard_browser.py through selenium) opens a training node's page and
//! watches it update live. The screenshot lands in target/tmp/dashboard.png.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Node, combined_output, event_data, python_script, read_events, require_tool};

fn require_browser() {
    for (program, install) in [
        ("chromium", "apt-get install chromium"),
        ("chromedriver", "apt-get install chromium-driver"),
    ] {
        require_tool(Command::new(program).arg("--version"), program, install);
    }
    require_tool(
        Command::new("python3").args(["-c", "import selenium"]),
        "python3 with selenium",
        "pip install selenium",
    );
}

#[test]
fn a_browser_sees_the_dashboard_train_live_and_generate() {
    require_browser();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("node"), &["--diloco-steps", "30"], &[]);

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = python_script("dashboard_browser.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(node.url("/"))
        .arg(&screenshot)
        .output()
        .expect("run python3");
    let report = combined_output(&output);
    assert!(
        output.status.success(),
        "browser check failed:\n{report}\nnode log:\n{}",
        node.log_tail()
    );
    println!("{report}");
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
}

#[test]
fn the_event_stream_starts_with_the_history_and_logs_filter_by_level() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("node"), &["--diloco-steps", "30"], &[]);

    // The snapshot, then an update a second later, without asking again.
    let received = read_events(node.port, "update");
    assert!(
        received.contains("content-type: text/event-stream"),
        "{received}"
    );
    let snapshot = received.find("event: snapshot").expect("a snapshot first");
    assert!(snapshot < received.find("event: update").unwrap());
    let history = event_data(&received, "snapshot");
    assert!(history["timeline"]["samples"].is_array(), "{history}");
    assert_eq!(history["stats"]["node_id"], node.stats()["node_id"]);
    let update = event_data(&received, "update");
    assert!(update["diloco"]["inner_steps_total"] == 30, "{update}");

    let lines = node.get("/api/logs?level=info&q=node+starting");
    let lines = lines["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["target"], "neuroshard::node");
    let warnings = node.get("/api/logs?level=warn&limit=500");
    for line in warnings["lines"].as_array().unwrap() {
        assert!(
            ["WARN", "ERROR"].contains(&line["level"].as_str().unwrap()),
            "{line}"
        );
    }
    let (status, body) = node.get_with_status("/api/logs?level=loud");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_request");
}
