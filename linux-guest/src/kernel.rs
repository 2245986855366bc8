//! Finding the project's Linux build in its cache.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::initramfs::InitramfsError;

/// Environment variable naming the cache root the build script and [`kernel`] use instead of
/// `/var/cache/zygote`.
pub const CACHE_ENV: &str = "ZYGOTE_CACHE";

/// Errors from finding the Linux guest.
#[derive(Debug, thiserror::Error)]
pub enum LinuxGuestError {
    /// The build script could not be started.
    #[error("cannot run {script}: {source}")]
    RunBuildScript {
        /// The script.
        script: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The build script could not say where the build belongs (e.g. `linux-source-6.12` is
    /// not installed).
    #[error("{script} --print-dir failed ({status}): {stderr}")]
    BuildScriptFailed {
        /// The script.
        script: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The kernel for the current inputs has not been built yet.
    #[error(
        "no Linux guest build at {dir}: run `./dev test` or `{script}` first \
         (the first build takes about 13 min on 2 cores; later runs reuse it)",
        script = build_script().display()
    )]
    NotBuilt {
        /// Where the build for the current inputs belongs.
        dir: PathBuf,
    },
    /// An initramfs (or a disk image's tree) could not be written.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// `mkfs.ext4` could not be started (Debian package `e2fsprogs`; `./dev` installs it).
    #[error("cannot run mkfs.ext4 (install e2fsprogs): {0}")]
    RunMkfs(#[source] std::io::Error),
    /// `mkfs.ext4` failed.
    #[error("mkfs.ext4 failed ({status}): {stderr}")]
    Mkfs {
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// The kernel images of one cached build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelArtifacts {
    /// The ELF `vmlinux` (entered at its 64-bit entry point).
    pub vmlinux: PathBuf,
    /// The `bzImage` (`arch/x86/boot/bzImage`: setup sectors, then the protected-mode kernel).
    pub bz_image: PathBuf,
}

/// `linux-guest/build-kernel.sh` in this checkout: builds the kernel into the cache when it is
/// missing (`--print-dir` only says where).
pub fn build_script() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/build-kernel.sh"))
}

/// The cache directory of the build for the current inputs: `<cache>/linux-<key>`, where
/// `<cache>` is `$ZYGOTE_CACHE` or `/var/cache/zygote` and `<key>` hashes the installed
/// `linux-source-6.12` version, the config fragment, the patch and the build script (the
/// script computes it; this runs `build-kernel.sh --print-dir`).
///
/// # Errors
/// [`LinuxGuestError::RunBuildScript`] or [`LinuxGuestError::BuildScriptFailed`].
pub fn kernel_cache_dir() -> Result<PathBuf, LinuxGuestError> {
    let script = build_script();
    let output = Command::new(script)
        .arg("--print-dir")
        .output()
        .map_err(|source| LinuxGuestError::RunBuildScript {
            script: script.to_owned(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout.trim();
    if !output.status.success() || dir.is_empty() {
        return Err(LinuxGuestError::BuildScriptFailed {
            script: script.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(PathBuf::from(dir))
}

/// The cached `vmlinux` and `bzImage` for the current inputs.
///
/// # Errors
/// [`LinuxGuestError::NotBuilt`] when they have not been built (run `./dev test` or
/// [`build_script`]); the errors of [`kernel_cache_dir`].
pub fn kernel() -> Result<KernelArtifacts, LinuxGuestError> {
    artifacts_in(&kernel_cache_dir()?)
}

/// The artifacts in a build directory, if both are there.
fn artifacts_in(dir: &Path) -> Result<KernelArtifacts, LinuxGuestError> {
    let artifacts = KernelArtifacts {
        vmlinux: dir.join("vmlinux"),
        bz_image: dir.join("bzImage"),
    };
    if artifacts.vmlinux.is_file() && artifacts.bz_image.is_file() {
        Ok(artifacts)
    } else {
        Err(LinuxGuestError::NotBuilt {
            dir: dir.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_build_is_not_built_naming_the_script() {
        let dir = Path::new("/nonexistent/zygote-cache/linux-0");
        let error = artifacts_in(dir).unwrap_err();
        assert!(matches!(error, LinuxGuestError::NotBuilt { dir: ref d } if d == dir));
        assert!(error.to_string().contains("build-kernel.sh"), "{error}");
    }

    #[test]
    fn cache_dir_is_keyed_under_the_cache_root() {
        let dir = kernel_cache_dir().expect("linux-source-6.12 is installed (./dev installs it)");
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("linux-6.12-"), "{name}");
        assert!(dir.is_absolute());
    }
}
