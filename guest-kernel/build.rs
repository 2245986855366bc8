//! Builds the guest kernel (`kernel/`, its own workspace) for `x86_64-unknown-none` with a
//! nested `cargo build --release`, and tells the library where the ELF is.
//!
//! The nested cargo runs in `kernel/` (so `kernel/.cargo/config.toml` applies), with its own
//! target directory under `OUT_DIR` (so it never waits on the outer build's lock), and with the
//! outer build's flags removed: fuzzing, sanitizer and coverage builds set RUSTFLAGS and
//! wrappers that must not reach a bare-metal kernel.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-none";
const BINARY: &str = "zygote-guest-kernel";

/// Variables removed from the nested cargo's environment, exactly.
const REMOVED_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_INCREMENTAL",
    "CARGO_LLVM_COV",
    "CARGO_LLVM_COV_TARGET_DIR",
    "LLVM_PROFILE_FILE",
];

/// Prefixes of variables removed from the nested cargo's environment.
const REMOVED_PREFIXES: &[&str] = &[
    "CARGO_TARGET_",
    "CARGO_PROFILE_",
    "CARGO_FEATURE_",
    "CARGO_CFG_",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let kernel_dir = manifest_dir.join("kernel");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir.join("kernel-target");

    for path in [
        "kernel/src",
        "kernel/Cargo.toml",
        "kernel/build.rs",
        "kernel/link.ld",
        "kernel/.cargo/config.toml",
        "proto/src",
        "proto/Cargo.toml",
        "build.rs",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }

    check_target_installed();

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&kernel_dir)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if REMOVED_VARS.contains(&key) || REMOVED_PREFIXES.iter().any(|p| key.starts_with(p)) {
            command.env_remove(key);
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("could not run cargo to build the guest kernel: {error}"));
    if !output.status.success() {
        panic!(
            "building the guest kernel in {} failed ({}):\n{}{}",
            kernel_dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }

    let kernel = target_dir.join(TARGET).join("release").join(BINARY);
    assert!(
        kernel.is_file(),
        "the guest kernel build left no {}",
        kernel.display()
    );
    println!("cargo:rustc-env=ZYGOTE_GUEST_KERNEL={}", kernel.display());
}

/// Panics with the fix when the toolchain building us lacks the kernel's target.
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output();
    let libdir = match output {
        Ok(output) if output.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
        }
        // Cannot tell (an odd rustc): let the build itself report.
        _ => return,
    };
    if !has_core(&libdir) {
        panic!(
            "the Rust target {TARGET} is not installed for this toolchain (no core in {}); \
             run: rustup target add {TARGET}",
            libdir.display()
        );
    }
}

fn has_core(libdir: &Path) -> bool {
    let Ok(entries) = libdir.read_dir() else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with("libcore-") && name.ends_with(".rlib")
    })
}
