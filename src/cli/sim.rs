//! `sim`: the Genesys Cloud simulator on its own (for the demo stack, manual tests, benchmarks).

use crate::{
    sim::{self, SimConfig},
    telemetry::{LogFormat, Telemetry},
};

#[derive(clap::Args)]
pub struct SimArgs {
    #[command(flatten)]
    pub config: SimConfig,
}

pub async fn run(args: SimArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let telemetry = Telemetry::init(log_format, "info")?;
    let result = sim::run(args.config, super::shutdown_signal()).await;
    telemetry.shutdown();
    Ok(result?)
}
