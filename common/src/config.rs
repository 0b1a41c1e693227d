//! Typed configuration shared by the binaries: each setting is a flag with an environment
//! fallback, so `--help` lists every one of them with its variable and default.

use std::time::Duration;

/// PostgreSQL settings.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "SWITCHYARD_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/switchyard"
    )]
    pub database_url: String,

    /// Maximum connections in this process's pool.
    #[arg(long, env = "SWITCHYARD_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// How long to wait for a pooled connection, or to open a new one, before giving up.
    /// This bounds how fast the ingress answers 503 when Postgres is down.
    #[arg(long, env = "SWITCHYARD_DB_TIMEOUT", default_value = "800ms", value_parser = parse_duration)]
    pub db_timeout: Duration,

    /// `statement_timeout` and `lock_timeout` set on every pooled connection.
    #[arg(long, env = "SWITCHYARD_DB_STATEMENT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_statement_timeout: Duration,
}

/// RabbitMQ settings.
#[derive(clap::Args, Debug, Clone)]
pub struct BrokerArgs {
    /// AMQP 0.9.1 URL of RabbitMQ.
    #[arg(
        long,
        env = "SWITCHYARD_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Prefix of every queue and exchange name, so that several deployments (or tests) share a broker.
    #[arg(long, env = "SWITCHYARD_AMQP_PREFIX", default_value = "switchyard.")]
    pub amqp_prefix: String,

    /// How long a publish may wait for the broker's confirm before it counts as failed.
    #[arg(long, env = "SWITCHYARD_PUBLISH_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub publish_timeout: Duration,
}

/// Logging and tracing settings.
#[derive(clap::Args, Debug, Clone)]
pub struct TelemetryArgs {
    /// Log filter in `tracing-subscriber` EnvFilter syntax.
    #[arg(long, env = "SWITCHYARD_LOG", default_value = "info")]
    pub log: String,

    /// Log format: `auto` (JSON unless stdout is a terminal), `json` or `text`.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", default_value = "auto")]
    pub log_format: LogFormat,

    /// OTLP/gRPC endpoint for traces (e.g. http://127.0.0.1:4317). Traces are exported only when set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Process settings.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Threads of the async runtime: 0 for one per core, 1 for a single-threaded runtime (the
    /// cheapest on a small machine shared with PostgreSQL and RabbitMQ; scale with replicas).
    #[arg(long, env = "SWITCHYARD_RUNTIME_THREADS", default_value_t = 0)]
    pub runtime_threads: usize,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// Parses `250ms`, `5s`, `5m`, `2h` or `1d` (a bare number means seconds).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration such as 250ms, 5s, 5m or 2h"))?;
    let millis = match unit.trim() {
        "ms" => Some(value),
        "" | "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        "d" => value.checked_mul(86_400_000),
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{raw}` (use ms, s, m, h or d)"
            ));
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration `{raw}` is too large"))
}

/// Parses a comma-separated list of durations, e.g. the webhook retry schedule `5s,5m,30m`.
pub fn parse_schedule(raw: &str) -> Result<Schedule, String> {
    let delays = raw
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    if delays.iter().any(Duration::is_zero) {
        return Err("retry delays must be greater than zero".into());
    }
    Ok(Schedule(delays))
}

/// An ordered list of retry delays: entry `i` is the wait before attempt `i + 2`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule(pub Vec<Duration>);

impl Schedule {
    /// The delay before the attempt that follows `failed_attempts` failures, or `None` when the
    /// schedule is exhausted.
    pub fn delay_after(&self, failed_attempts: u32) -> Option<Duration> {
        let index = usize::try_from(failed_attempts).ok()?.checked_sub(1)?;
        self.0.get(index).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("10h"), Ok(Duration::from_secs(36_000)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn bad_durations_are_rejected() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn schedule_parses_and_indexes_by_failures() {
        let schedule = parse_schedule("5s,5m,30m").expect("valid schedule");
        assert_eq!(schedule.delay_after(0), None);
        assert_eq!(schedule.delay_after(1), Some(Duration::from_secs(5)));
        assert_eq!(schedule.delay_after(3), Some(Duration::from_secs(1_800)));
        assert_eq!(schedule.delay_after(4), None);
        assert!(parse_schedule("5s,0s").is_err());
        assert_eq!(parse_schedule("").map(|s| s.0.len()), Ok(0));
    }

    #[derive(Parser, Debug)]
    struct Demo {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    }

    #[test]
    fn flags_override_defaults_and_help_lists_every_setting() {
        let demo = Demo::try_parse_from([
            "demo",
            "--database-url",
            "postgres://x@127.0.0.1/y",
            "--db-timeout",
            "300ms",
            "--amqp-prefix",
            "t1.",
        ])
        .expect("flags parse");
        assert_eq!(demo.db.database_url, "postgres://x@127.0.0.1/y");
        assert_eq!(demo.db.db_timeout, Duration::from_millis(300));
        assert_eq!(demo.broker.amqp_prefix, "t1.");
        assert_eq!(demo.telemetry.log_format, LogFormat::Auto);

        let help = <Demo as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for var in [
            "SWITCHYARD_DATABASE_URL",
            "SWITCHYARD_DB_POOL_SIZE",
            "SWITCHYARD_DB_TIMEOUT",
            "SWITCHYARD_DB_STATEMENT_TIMEOUT",
            "SWITCHYARD_AMQP_URL",
            "SWITCHYARD_AMQP_PREFIX",
            "SWITCHYARD_PUBLISH_TIMEOUT",
            "SWITCHYARD_LOG",
            "SWITCHYARD_LOG_FORMAT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            assert!(help.contains(var), "--help does not mention {var}");
        }
    }

    #[test]
    fn invalid_flag_values_fail_at_start_up() {
        let err = Demo::try_parse_from(["demo", "--db-timeout", "soon"]).expect_err("must fail");
        assert!(err.to_string().contains("soon"));
    }
}
