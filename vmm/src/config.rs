//! Building a VM: the builder and the validation that turns it into a [`VmConfig`].

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::arch::layout::CMDLINE_MAX_SIZE;
use crate::console::SerialOutput;
use crate::devices::{BlockConfig, DeviceConfigs, NetConfig, VsockConfig};
use crate::vm::SerialSource;

/// Most vCPUs a VM may have: APIC IDs must fit the 8 bits of CPUID leaf 1.
pub const MAX_VCPUS: u8 = 254;
/// Least memory a VM may have: the kernel loads at 1 MiB and needs room above it.
pub const MIN_MEMORY_MIB: u64 = 8;
/// Most memory a VM may have (1 TiB); more is a mistake, not a microVM.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// A configuration field that failed validation, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `vcpus` was 0.
    #[error("vcpus: a VM needs at least one vCPU")]
    NoVcpus,
    /// `vcpus` was above [`MAX_VCPUS`].
    #[error("vcpus: {requested} requested, at most {max} are supported")]
    TooManyVcpus {
        /// Requested count.
        requested: u32,
        /// Maximum supported.
        max: u8,
    },
    /// `memory_mib` was below [`MIN_MEMORY_MIB`].
    #[error("memory_mib: {requested} MiB is too small, at least {min} MiB are needed")]
    MemoryTooSmall {
        /// Requested size in MiB.
        requested: u64,
        /// Minimum in MiB.
        min: u64,
    },
    /// `memory_mib` was above [`MAX_MEMORY_MIB`].
    #[error("memory_mib: {requested} MiB is more than the maximum of {max} MiB")]
    MemoryTooLarge {
        /// Requested size in MiB.
        requested: u64,
        /// Maximum in MiB.
        max: u64,
    },
    /// No kernel was given.
    #[error("kernel: no kernel image was given")]
    NoKernel,
    /// The kernel file could not be opened.
    #[error("kernel: cannot open {path}: {source}")]
    KernelUnreadable {
        /// The path given.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The kernel file is neither an ELF image nor a bzImage.
    #[error("kernel: {path} is neither an ELF image nor a bzImage")]
    UnknownKernelFormat {
        /// The path given.
        path: PathBuf,
    },
    /// The initrd file could not be opened.
    #[error("initrd: cannot open {path}: {source}")]
    InitrdUnreadable {
        /// The path given.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The command line the guest would get (with the virtio device entries added) is longer
    /// than the boot protocol allows.
    #[error("cmdline: {len} bytes is longer than the maximum of {max}")]
    CmdlineTooLong {
        /// Length of the final line, in bytes, without its NUL.
        len: usize,
        /// Maximum length, in bytes.
        max: usize,
    },
    /// More virtio devices than a VM can have.
    #[error("devices: {requested} virtio devices, at most {max} are supported")]
    TooManyDevices {
        /// Devices configured.
        requested: usize,
        /// Maximum supported.
        max: u32,
    },
    /// The command line has characters the boot protocol does not allow.
    #[error("cmdline: only printable ASCII is allowed")]
    CmdlineInvalid,
}

/// A validated VM configuration.
pub struct VmConfig {
    pub(crate) context: Option<std::sync::Arc<crate::KvmContext>>,
    pub(crate) vcpus: u8,
    pub(crate) memory_bytes: u64,
    pub(crate) kernel: File,
    pub(crate) cmdline: String,
    pub(crate) initrd: Option<File>,
    pub(crate) serial_output: SerialOutput,
    pub(crate) serial_input: Option<Box<dyn SerialSource>>,
    pub(crate) devices: DeviceConfigs,
}

/// Builds a microVM.
///
/// ```no_run
/// use zygote::{ConsoleBuffer, SerialOutput, VmBuilder};
///
/// let console = ConsoleBuffer::new();
/// let mut vm = VmBuilder::new()
///     .vcpus(1)
///     .memory_mib(128)
///     .kernel("guest.elf")
///     .cmdline("zygote.workload=ready")
///     .serial_output(SerialOutput::Buffer(console.clone()))
///     .build()?
///     .start()?;
/// let exit = vm.wait()?;
/// println!("{exit:?}: {}", console.text());
/// # Ok::<(), zygote::Error>(())
/// ```
pub struct VmBuilder {
    context: Option<std::sync::Arc<crate::KvmContext>>,
    vcpus: u32,
    memory_mib: u64,
    kernel: Option<PathBuf>,
    cmdline: String,
    initrd: Option<PathBuf>,
    serial_output: SerialOutput,
    serial_input: Option<Box<dyn SerialSource>>,
    devices: DeviceConfigs,
}

impl Default for VmBuilder {
    fn default() -> Self {
        Self {
            context: None,
            vcpus: 1,
            memory_mib: 128,
            kernel: None,
            cmdline: String::new(),
            initrd: None,
            serial_output: SerialOutput::Discard,
            serial_input: None,
            devices: DeviceConfigs::default(),
        }
    }
}

impl VmBuilder {
    /// A builder with one vCPU, 128 MiB of memory and no kernel yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process's KVM context, shared by every VM it makes; without one, `build()` opens
    /// `/dev/kvm` and reads the host's CPUID for this VM alone (130-160 µs here).
    pub fn context(mut self, context: std::sync::Arc<crate::KvmContext>) -> Self {
        self.context = Some(context);
        self
    }

    /// Number of vCPUs.
    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.vcpus = vcpus;
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// The kernel: an ELF image (a Linux `vmlinux` or Zygote's guest kernel) in a regular file
    /// or a block device.
    pub fn kernel(mut self, path: impl AsRef<Path>) -> Self {
        self.kernel = Some(path.as_ref().to_path_buf());
        self
    }

    /// The kernel command line. Zygote's own kernel parameters (one `virtio_mmio.device=`
    /// entry per device) go before the first `--` word, so the words after it reach init
    /// exactly as given; with no `--` they are appended.
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = cmdline.into();
        self
    }

    /// An initial ramdisk loaded at the top of low memory: a regular file or a block device,
    /// all of whose bytes are loaded.
    pub fn initrd(mut self, path: impl AsRef<Path>) -> Self {
        self.initrd = Some(path.as_ref().to_path_buf());
        self
    }

    /// Where the guest's serial console goes.
    pub fn serial_output(mut self, output: SerialOutput) -> Self {
        self.serial_output = output;
        self
    }

    /// Sends the guest's serial console output to any writer.
    pub fn serial_writer(self, writer: impl Write + Send + 'static) -> Self {
        self.serial_output(SerialOutput::Writer(Box::new(writer)))
    }

    /// A source of bytes the guest receives on its serial port: stdin, a pipe, a socket, a
    /// file. It is read on a thread that waits on its fd, and stops when the VM is dropped.
    pub fn serial_input(mut self, input: impl SerialSource + 'static) -> Self {
        self.serial_input = Some(Box::new(input));
        self
    }

    /// Adds a virtio-blk disk.
    pub fn block(mut self, config: BlockConfig) -> Self {
        self.devices.blocks.push(config);
        self
    }

    /// Adds a virtio-net device.
    pub fn net(mut self, config: NetConfig) -> Self {
        self.devices.nets.push(config);
        self
    }

    /// Gives the VM a virtio-vsock device (one at most; a second call replaces the first).
    pub fn vsock(mut self, config: VsockConfig) -> Self {
        self.devices.vsock = Some(config);
        self
    }

    /// Validates the configuration without creating anything.
    pub fn validate(self) -> Result<VmConfig, ConfigError> {
        let vcpus = validate_vcpus(self.vcpus)?;
        let memory_bytes = validate_memory(self.memory_mib)?;
        let kernel = open_kernel(self.kernel.as_deref().ok_or(ConfigError::NoKernel)?)?;
        let devices = validate_device_count(&self.devices)?;
        validate_cmdline(&self.cmdline, devices)?;
        let initrd = self
            .initrd
            .map(|path| {
                open_image(&path).map_err(|source| ConfigError::InitrdUnreadable { path, source })
            })
            .transpose()?;
        Ok(VmConfig {
            context: self.context,
            vcpus,
            memory_bytes,
            kernel,
            cmdline: self.cmdline,
            initrd,
            serial_output: self.serial_output,
            serial_input: self.serial_input,
            devices: self.devices,
        })
    }

    /// Validates the configuration and creates the VM, ready to start.
    pub fn build(self) -> Result<crate::Vm, crate::Error> {
        crate::Vm::create(self.validate()?)
    }
}

fn validate_vcpus(vcpus: u32) -> Result<u8, ConfigError> {
    match u8::try_from(vcpus) {
        Ok(0) => Err(ConfigError::NoVcpus),
        Ok(n) if n <= MAX_VCPUS => Ok(n),
        _ => Err(ConfigError::TooManyVcpus {
            requested: vcpus,
            max: MAX_VCPUS,
        }),
    }
}

fn validate_memory(mib: u64) -> Result<u64, ConfigError> {
    if mib < MIN_MEMORY_MIB {
        return Err(ConfigError::MemoryTooSmall {
            requested: mib,
            min: MIN_MEMORY_MIB,
        });
    }
    if mib > MAX_MEMORY_MIB {
        return Err(ConfigError::MemoryTooLarge {
            requested: mib,
            max: MAX_MEMORY_MIB,
        });
    }
    Ok(mib << 20)
}

fn open_kernel(path: &Path) -> Result<File, ConfigError> {
    let unreadable = |source| ConfigError::KernelUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let mut file = open_image(path).map_err(unreadable)?;
    let mut magic = [0u8; 4];
    let is_elf = match file.read_exact(&mut magic) {
        Ok(()) => magic == *b"\x7fELF",
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(unreadable(e)),
    };
    if !is_elf && !crate::boot::bzimage::is_bzimage(&mut file).map_err(unreadable)? {
        return Err(ConfigError::UnknownKernelFormat {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// Opens a regular file or a block device for reading. Anything else (a FIFO would block the
/// open, a directory cannot hold an image) is refused first.
fn open_image(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ));
    }
    File::open(path)
}

fn validate_device_count(devices: &DeviceConfigs) -> Result<u32, ConfigError> {
    let requested =
        devices.blocks.len() + devices.nets.len() + usize::from(devices.vsock.is_some());
    match u32::try_from(requested) {
        Ok(n) if n <= crate::virtio::MAX_DEVICES => Ok(n),
        _ => Err(ConfigError::TooManyDevices {
            requested,
            max: crate::virtio::MAX_DEVICES,
        }),
    }
}

/// Checks the command line as the guest will get it: with one entry per virtio device added
/// where `boot::cmdline::with_additions` puts them.
fn validate_cmdline(cmdline: &str, devices: u32) -> Result<(), ConfigError> {
    let entries: Vec<String> = (0..devices).map(crate::virtio::cmdline_entry).collect();
    let len = crate::boot::cmdline::with_additions(cmdline, &entries).len();
    // The boot protocol needs room for the terminating NUL.
    if len >= CMDLINE_MAX_SIZE {
        return Err(ConfigError::CmdlineTooLong {
            len,
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    if !cmdline.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(ConfigError::CmdlineInvalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_checks() {
        assert!(matches!(validate_vcpus(0), Err(ConfigError::NoVcpus)));
        assert!(matches!(
            validate_vcpus(255),
            Err(ConfigError::TooManyVcpus { .. })
        ));
        assert!(matches!(
            validate_vcpus(1 << 20),
            Err(ConfigError::TooManyVcpus { .. })
        ));
        assert_eq!(validate_vcpus(2).unwrap(), 2);
        assert!(matches!(
            validate_memory(0),
            Err(ConfigError::MemoryTooSmall { .. })
        ));
        assert!(matches!(
            validate_memory(u64::MAX),
            Err(ConfigError::MemoryTooLarge { .. })
        ));
        assert_eq!(validate_memory(16).unwrap(), 16 << 20);
        assert!(matches!(
            validate_cmdline(&"x".repeat(CMDLINE_MAX_SIZE), 0),
            Err(ConfigError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            validate_cmdline("a\nb", 0),
            Err(ConfigError::CmdlineInvalid)
        ));
        validate_cmdline("console=ttyS0 zygote.workload=ready", 0).unwrap();
        // Room for the line but not for the devices' entries appended to it.
        let almost = "x".repeat(CMDLINE_MAX_SIZE - 10);
        validate_cmdline(&almost, 0).unwrap();
        assert!(matches!(
            validate_cmdline(&almost, 1),
            Err(ConfigError::CmdlineTooLong { .. })
        ));
    }

    /// Length of the line the guest gets for `cmdline` with `devices` entries, or the error.
    fn final_len(cmdline: &str, devices: u32) -> Result<(), usize> {
        match validate_cmdline(cmdline, devices) {
            Ok(()) => Ok(()),
            Err(ConfigError::CmdlineTooLong { len, .. }) => Err(len),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn the_length_limit_counts_the_final_line_with_devices() {
        let entry = crate::virtio::cmdline_entry(0).len();
        let max = CMDLINE_MAX_SIZE - 1;
        // Longest user line that still fits with one device, with the entry appended or put
        // before a `--`, even one at the very end: the final line is the same length.
        let fits = max - 1 - entry;
        for tail in ["", " -- -c true", " --", " -- a -- b"] {
            let user = "x".repeat(fits - tail.len()) + tail;
            assert_eq!(final_len(&user, 1), Ok(()), "{tail:?}");
            let over = "x".repeat(fits + 1 - tail.len()) + tail;
            assert_eq!(final_len(&over, 1), Err(max + 1), "{tail:?}");
        }
        // Trailing spaces before the entry are not in the final line.
        let spaced = "x".repeat(fits) + "   ";
        assert_eq!(final_len(&spaced, 1), Ok(()));
        // An empty user line gets the entries alone, without a leading space.
        let entries: usize = (0..16).map(|i| crate::virtio::cmdline_entry(i).len()).sum();
        assert_eq!(final_len("", 16), Ok(()));
        let user = "x".repeat(max - entries - 16);
        assert_eq!(final_len(&user, 16), Ok(()));
        assert_eq!(final_len(&(user + "x"), 16), Err(max + 1));
    }

    #[test]
    fn errors_name_the_field() {
        let err = validate_memory(1).unwrap_err().to_string();
        assert!(err.starts_with("memory_mib:"), "{err}");
        let err = VmBuilder::new().validate().err().unwrap().to_string();
        assert!(err.starts_with("kernel:"), "{err}");
    }
}
