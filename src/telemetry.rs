//! Logging. Plain lines without timestamps under systemd (journald stamps
//! each line itself), timestamped lines in a terminal, or one JSON object
//! per line on request.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` wins over `level`. ONNX
/// Runtime's and sqlx's own chatter is held at warn unless asked for by name.
pub fn init(format: LogFormat, level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| format!("ort=warn,sqlx=warn,{level}"));
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|error| {
        eprintln!("tagd: log filter {filter:?} is invalid ({error}); using info");
        EnvFilter::new("info")
    });

    let under_systemd =
        std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Auto if under_systemd => {
            builder.without_time().with_ansi(false).with_target(false).try_init()
        }
        LogFormat::Auto | LogFormat::Text => builder.with_target(false).try_init(),
    };
    // A second init (tests, or a command that logs before its config is
    // known) keeps the first subscriber.
    let _ = result;
}
