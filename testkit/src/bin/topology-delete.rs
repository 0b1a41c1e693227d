//! `topology-delete --prefix P`: deletes the queues and the control exchange of one broker prefix.
//! Scripts that start a throwaway ingress (the API fuzzing) clean up with it.

use clap::Parser;
use switchyard_common::amqp::{Topology, delete_topology};

#[derive(Parser)]
#[command(
    name = "topology-delete",
    about = "Deletes a Switchyard broker prefix's queues"
)]
struct Args {
    /// The `SWITCHYARD_AMQP_PREFIX` whose queues go.
    #[arg(long)]
    prefix: String,
    #[arg(
        long,
        env = "SWITCHYARD_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    delete_topology(&args.amqp_url, &Topology::new(args.prefix)).await?;
    Ok(())
}
