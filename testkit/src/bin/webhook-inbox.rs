//! `webhook-inbox`: a local webhook receiver for the quickstart. It verifies every delivery with
//! the Standard Webhooks algorithm and prints it.

use std::sync::Arc;

use clap::Parser;
use switchyard_testkit::{Received, Receiver};

#[derive(Parser)]
#[command(
    name = "webhook-inbox",
    about = "Prints and verifies Switchyard webhooks"
)]
struct Args {
    /// Address to listen on; deliveries are accepted at /hook.
    #[arg(long, env = "INBOX_LISTEN", default_value = "127.0.0.1:9090")]
    listen: String,
    /// The whsec_ secret the notifier signs with.
    #[arg(long, env = "SWITCHYARD_WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let print: Arc<dyn Fn(&Received) + Send + Sync> = Arc::new(|r: &Received| {
        let verdict = if r.verified {
            "signature VERIFIED"
        } else {
            "signature INVALID"
        };
        let event = r.body.get("type").and_then(|t| t.as_str()).unwrap_or("?");
        println!("webhook {} {event} ({verdict})", r.webhook_id);
        println!(
            "{}",
            serde_json::to_string_pretty(&r.body).unwrap_or_default()
        );
    });
    let receiver = Receiver::start_on(&args.listen, &args.secret, Vec::new(), Some(print)).await?;
    println!("webhook inbox listening on {}", receiver.url);
    switchyard_common::shutdown_signal().await;
    Ok(())
}
