//! Validating AsyncAPI documents with the official parser (npm `@asyncapi/parser`), installed
//! by `scripts/install-asyncapi-parser.sh` and given as `EVENTBUS_ASYNCAPI_NODE_MODULES`.

use std::process::{Command, Stdio};
use std::time::Duration;

/// The variable naming the parser's `node_modules` directory.
pub const ASYNCAPI_ENV: &str = "EVENTBUS_ASYNCAPI_NODE_MODULES";

/// Validates `document` with `@asyncapi/parser`: `Some(report)` when it is valid (the parser's
/// output), `None` (with a note) when the parser is not installed. Panics with the parser's
/// diagnostics when the document is invalid, and in CI (`CI` set) when the parser is missing.
pub fn validate_asyncapi(document: &serde_json::Value) -> Option<String> {
    let modules = match std::env::var(ASYNCAPI_ENV) {
        Ok(m) if !m.is_empty() => m,
        _ => {
            let instruction = format!(
                "{ASYNCAPI_ENV} is not set: run \
                 `export {ASYNCAPI_ENV}=\"$(scripts/install-asyncapi-parser.sh | tail -n1)\"`"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{instruction}");
            }
            eprintln!("note: skipping the AsyncAPI parser's validation; {instruction}");
            return None;
        }
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("asyncapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(document).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/foreign/validate_asyncapi.mjs");
    let child = Command::new("node")
        .arg(script)
        .arg(&file)
        .env(ASYNCAPI_ENV, &modules)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let output = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the AsyncAPI parser finishes within 120 s")
        .expect("the AsyncAPI parser runs");
    let status = output.status;
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "the AsyncAPI parser refuses the document ({status}):\n{out}{err}\ndocument:\n{}",
        serde_json::to_string_pretty(document).unwrap()
    );
    Some(out.into_owned())
}
