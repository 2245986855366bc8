//! The Linux guest agent: set the guest up when it is PID 1, then serve vsock connections,
//! one thread each.

mod init;
mod vsock;

use std::sync::Arc;

use zygote_linux_agent::{serve, Agent, AGENT_PORT, READY_LINE};

fn main() {
    let agent = Arc::new(Agent::new());
    if std::process::id() == 1 {
        init::pid1(&agent);
    }
    let listener = match vsock::VsockListener::bind(AGENT_PORT) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("zygote-linux-agent: cannot listen on vsock port {AGENT_PORT}: {error}");
            park_or_exit();
        }
    };
    println!("{READY_LINE} on vsock port {AGENT_PORT}");
    loop {
        match listener.accept() {
            Ok(conn) => {
                let agent = Arc::clone(&agent);
                std::thread::spawn(move || serve(&agent, conn));
            }
            Err(error) => {
                eprintln!("zygote-linux-agent: accept: {error}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// A PID 1 that exits panics the kernel; sleep instead so the console stays readable.
fn park_or_exit() -> ! {
    if std::process::id() == 1 {
        loop {
            std::thread::park();
        }
    }
    std::process::exit(1)
}
