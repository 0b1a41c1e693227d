//! Verification from outside: the official `standardwebhooks` library from PyPI checks what a
//! receiver got, in the venv `scripts/py-tools.sh` makes (`SWITCHYARD_PY_VENV`).

use base64::Engine as _;
use serde_json::{Value, json};

use crate::Received;

const VERIFY_PY: &str = r#"
import base64, json, sys
from standardwebhooks import Webhook
secret, deliveries = sys.argv[1], json.load(open(sys.argv[2]))
hook = Webhook(secret)
verified = rejected = 0
for d in deliveries:
    headers = {"webhook-id": d["id"], "webhook-timestamp": d["timestamp"], "webhook-signature": d["signature"]}
    try:
        payload = hook.verify(base64.b64decode(d["body"]), headers)
        assert payload["data"]["id"] == d["subject"], "the payload names its subject"
        verified += 1
    except Exception as e:
        rejected += 1
print(f"{verified} verified, {rejected} rejected")
"#;

/// Runs `standardwebhooks.Webhook(secret).verify` over `received`, plus a copy of the first with
/// its body tampered with when `tamper` is set; answers `"N verified, M rejected"`.
pub fn verify(secret: &str, received: &[Received], tamper: bool) -> String {
    let venv = std::env::var("SWITCHYARD_PY_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/switchyard/venv",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let python = format!("{venv}/bin/python");
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let entry = |r: &Received, body: &[u8]| -> Value {
        json!({"id": r.webhook_id, "timestamp": r.timestamp, "signature": r.signature,
               "body": encode(body), "subject": r.body["data"]["id"]})
    };
    let mut deliveries: Vec<Value> = received.iter().map(|r| entry(r, &r.raw_body)).collect();
    if let (true, Some(first)) = (tamper, received.first()) {
        let mut tampered = first.raw_body.clone();
        tampered.extend_from_slice(b" ");
        deliveries.push(entry(first, &tampered));
    }
    let file = std::env::temp_dir().join(format!("sy-webhooks-{}.json", crate::unique()));
    std::fs::write(&file, serde_json::to_vec(&deliveries).unwrap_or_default())
        .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    let output = std::process::Command::new(&python)
        .args(["-c", VERIFY_PY, secret])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} ({e}); scripts/py-tools.sh installs standardwebhooks")
        });
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.trim().to_owned()
}
