//! `plugin_version` must carry the Slurm release the plugin is loaded into: Slurm's plugin
//! loader compares its major.minor with its own and refuses the plugin otherwise. Read it from
//! the installed headers (`libslurm-dev`: `slurm/slurm_version.h`), so that a build on a node
//! with another Slurm gets that Slurm's number. Without the headers, fall back to the number
//! the plugin was developed against, and say so.

use std::path::PathBuf;

/// `SLURM_VERSION_NUMBER` as read from Debian 12's `libslurm-dev` 22.05.8-4+deb12u3
/// (`/usr/include/slurm/slurm_version.h`: `#define SLURM_VERSION_NUMBER 0x160508`, i.e.
/// 22.05.8). Used only when no header is found.
const FALLBACK: u32 = 0x16_05_08;

fn main() {
    println!("cargo:rerun-if-env-changed=SLURM_VERSION_H");
    let header = std::env::var_os("SLURM_VERSION_H")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include/slurm/slurm_version.h"));
    // A path that does not exist makes cargo rerun this script on every build, so installing
    // the headers later is picked up.
    println!("cargo:rerun-if-changed={}", header.display());

    let version = match std::fs::read_to_string(&header) {
        Ok(text) => match parse(&text) {
            Some(v) => v,
            None => panic!(
                "{}: no `#define SLURM_VERSION_NUMBER 0x...` line",
                header.display()
            ),
        },
        Err(e) => {
            println!(
                "cargo:warning=cgjob-spank: cannot read {} ({e}); built for Slurm {} \
                 (install libslurm-dev, or set SLURM_VERSION_H, to build for the installed Slurm)",
                header.display(),
                show(FALLBACK)
            );
            FALLBACK
        }
    };
    println!("cargo:rustc-env=CGJOB_SPANK_SLURM_VERSION_NUMBER={version}");
    println!(
        "cargo:rustc-env=CGJOB_SPANK_SLURM_VERSION={}",
        show(version)
    );
}

fn parse(text: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        if (w.next(), w.next()) != (Some("#define"), Some("SLURM_VERSION_NUMBER")) {
            return None;
        }
        let v = w.next()?;
        match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    })
}

fn show(v: u32) -> String {
    format!("{}.{:02}.{}", v >> 16 & 0xff, v >> 8 & 0xff, v & 0xff)
}
