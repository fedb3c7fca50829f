//! The Python baselines the ledger benches run in the same process tree.

use std::process::Command;

use serde_json::Value;

/// Runs benches/ledger_python.py with `args` and returns the JSON it prints; `None` when python3
/// (or a package the mode needs) is missing or the script fails.
pub fn ledger_python(args: &[&str]) -> Option<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/ledger_python.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}
