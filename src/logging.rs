//! tracing to stderr: `warn` by default (cgjob shares the job's terminal), `-v` info, `-vv`
//! debug; `RUST_LOG` overrides; text or JSON. Nothing ever goes to stdout, which is the job's.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(verbose: u8, format: LogFormat) {
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    // Colour only for a person at a terminal, never into a log file or pipe.
    // SAFETY: isatty on fd 2.
    let ansi = unsafe { libc::isatty(2) } == 1;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    // EnvFilter compiles a regex to parse its directives (~0.1 ms, a tenth of a short job's
    // whole run): only pay for it when RUST_LOG asks for directives.
    let _ = match (std::env::var_os("RUST_LOG").is_some(), format) {
        (true, LogFormat::Text) => builder.with_env_filter(env_filter(level)).try_init(),
        (true, LogFormat::Json) => builder.json().with_env_filter(env_filter(level)).try_init(),
        (false, LogFormat::Text) => builder.with_max_level(level).try_init(),
        (false, LogFormat::Json) => builder.json().with_max_level(level).try_init(),
    };
}

fn env_filter(level: LevelFilter) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level.to_string()))
}
