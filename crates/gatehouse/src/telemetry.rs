//! Logging to stderr, as text or JSON lines.

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.filter))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let result = match config.format.as_str() {
        "json" => builder.json().try_init(),
        _ => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}
