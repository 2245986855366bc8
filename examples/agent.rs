//! Boots Zygote's guest kernel with a disk, a NIC on the in-process packet backend and a vsock
//! device, drives each through the guest agent, and prints one line of figures:
//!
//! - `agent_rtt_us`: median round trip of an agent `ping` over vsock;
//! - `agent_idle_rtt_us`: the same for a `ping` sent after 20 ms of quiet, when the guest is
//!   asleep on the idle port (the wake-up is in it);
//! - `vsock_mib_s`: host-to-guest stream throughput (64 MiB `sink`, checksum verified);
//! - `blk_read_mib_s`: sequential disk reads through the agent (128 KiB requests; the data
//!   also crosses vsock back to the host);
//! - `net_frames_s`: 1514-byte frames the guest sends, each on its own agent request, received
//!   by the host.
//!
//! Run: `cargo run --release --example agent`

use std::error::Error;
use std::time::{Duration, Instant};

use zygote::{BlockConfig, ConsoleBuffer, NetConfig, SerialOutput, VsockConfig};
use zygote_guest::proto::agent::StreamChecksum;
use zygote_guest::{Workload, READY_LINE};

const DISK_MIB: usize = 64;

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("zygote-agent-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0x5a; DISK_MIB << 20])?;
    let (net, endpoint) = NetConfig::packet()?;
    let console = ConsoleBuffer::with_echo(Box::new(std::io::stdout()));
    let vm = zygote_examples::guest(&Workload::Agent, 256)
        .block(BlockConfig::new(&disk).overlay())
        .net(net)
        .vsock(VsockConfig {
            guest_cid: 3,
            uds_path: dir.join("vsock"),
        })
        .serial_output(SerialOutput::Buffer(console.clone()))
        .build()?;
    let mut vm = vm.start()?;
    if !console.wait_for(READY_LINE, Duration::from_secs(60)) {
        vm.shutdown()?;
        return Err("the agent did not become ready within 60 s".into());
    }
    let mut agent = vm.agent()?;

    let mut rtts: Vec<Duration> = (0..1000)
        .map(|_| {
            let start = Instant::now();
            agent.ping().map(|()| start.elapsed())
        })
        .collect::<Result<_, _>>()?;
    rtts.sort();
    let rtt = rtts[rtts.len() / 2];

    let mut idle_rtts: Vec<Duration> = (0..25)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            let start = Instant::now();
            agent.ping().map(|()| start.elapsed())
        })
        .collect::<Result<_, _>>()?;
    idle_rtts.sort();
    let idle_rtt = idle_rtts[idle_rtts.len() / 2];

    let data = vec![0xa5u8; 64 << 20];
    let mut expected = StreamChecksum::new();
    expected.update(&data);
    let start = Instant::now();
    let (len, checksum) = agent.sink(&data)?;
    let vsock_mib_s = mib_per_s(data.len(), start.elapsed());
    if (len, checksum) != (data.len() as u64, expected.value()) {
        return Err("the guest's checksum of the vsock stream does not match".into());
    }

    let start = Instant::now();
    for chunk in 0..(DISK_MIB << 20) / (128 << 10) {
        let read = agent.disk_read(chunk as u64 * 256, 256)?;
        if read.iter().any(|&b| b != 0x5a) {
            return Err("the disk read back wrong data".into());
        }
    }
    let blk_read_mib_s = mib_per_s(DISK_MIB << 20, start.elapsed());

    let frame: Vec<u8> = (0..1514).map(|i| i as u8).collect();
    let frames = 2000;
    let mut buf = vec![0u8; 2048];
    let start = Instant::now();
    for _ in 0..frames {
        agent.net_send(&frame)?;
        match endpoint.recv(&mut buf, Duration::from_secs(5))? {
            Some(n) if buf[..n] == frame[..] => {}
            _ => return Err("a frame from the guest went missing".into()),
        }
    }
    let net_frames_s = frames as f64 / start.elapsed().as_secs_f64();

    agent.exit(0)?;
    let exit = vm.wait()?;
    std::fs::remove_dir_all(&dir)?;
    if exit.exit_code() != Some(0) {
        return Err(format!("the guest stopped with {exit:?}").into());
    }
    println!(
        "agent_rtt_us={} agent_idle_rtt_us={} vsock_mib_s={:.0} blk_read_mib_s={:.0} \
         net_frames_s={:.0}",
        rtt.as_micros(),
        idle_rtt.as_micros(),
        vsock_mib_s,
        blk_read_mib_s,
        net_frames_s
    );
    Ok(())
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}
