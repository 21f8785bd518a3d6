//! tracing to stderr: `warn` by default (cgjob shares the job's terminal), `-v` info, `-vv`
//! debug; `RUST_LOG` overrides; text or JSON. Nothing ever goes to stdout, which is the job's.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
