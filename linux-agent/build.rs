//! Builds this package's binary for `x86_64-unknown-linux-musl` (a static program for a Linux
//! guest's initramfs) with a nested `cargo build --release`, and tells the library where it is.
//!
//! The nested build compiles this package again for the musl target; its own run of this script
//! sees that target and stops there. It runs with its own target directory under `OUT_DIR` (so
//! it never waits on the outer build's lock) and without the outer build's flags, wrappers and
//! profile overrides (fuzzing, sanitizer and coverage flags must not reach the guest binary),
//! the same rules as guest-kernel/build.rs.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-musl";
const BINARY: &str = "zygote-linux-agent";

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
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../guest-kernel/proto/src");
    if env::var("TARGET").as_deref() == Ok(TARGET) {
        // The nested build itself (or a user building for musl): nothing to nest.
        println!("cargo:rustc-env=ZYGOTE_LINUX_AGENT_BINARY=");
        return;
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir.join("agent-target");
    check_target_installed();

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&manifest_dir)
        .args(["build", "--release", "--bin", BINARY, "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if REMOVED_VARS.contains(&key) || REMOVED_PREFIXES.iter().any(|p| key.starts_with(p)) {
            command.env_remove(key);
        }
    }
    // Every byte of the initramfs is copied by emulated kernel code: no symbols.
    command.env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("could not run cargo to build the Linux agent: {error}"));
    if !output.status.success() {
        panic!(
            "building the Linux agent for {TARGET} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
    let binary = target_dir.join(TARGET).join("release").join(BINARY);
    assert!(
        binary.is_file(),
        "the agent build left no {}",
        binary.display()
    );
    println!(
        "cargo:rustc-env=ZYGOTE_LINUX_AGENT_BINARY={}",
        binary.display()
    );
}

/// Panics with the fix when the toolchain building us lacks the musl target.
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
    if !has_std(&libdir) {
        panic!(
            "the Rust target {TARGET} is not installed for this toolchain (no std in {}); \
             run: rustup target add {TARGET}",
            libdir.display()
        );
    }
}

fn has_std(libdir: &Path) -> bool {
    let Ok(entries) = libdir.read_dir() else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with("libstd-") && name.ends_with(".rlib")
    })
}
