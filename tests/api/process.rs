//! The real `billing` binary as a child process, for tests of what only a
//! process shows: subcommands, signals, several replicas.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `billing` process; stderr lines are forwarded to a channel.
pub struct Process {
    pub child: std::process::Child,
    pub lines: mpsc::Receiver<String>,
}

/// Starts `billing ARGS` on `database_url`, logging at `info`.
pub fn billing(args: &[&str], database_url: &str) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_billing"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("billing starts");
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Process { child, lines }
}

/// A test that fails mid-way must not leave its server running.
impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Waits for the process to exit and returns its status with every line
    /// it wrote to stderr (read to the end, not just what has arrived yet).
    pub fn finish(&mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.child.wait().expect("billing exits");
        (status, self.lines.iter().collect())
    }

    /// The address the server logs once it listens (within a minute).
    pub fn serving_addr(&self) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("server logs its address");
            if let Some((_, rest)) = line.split_once("serving addr=") {
                return rest.trim().to_owned();
            }
        }
    }
}

/// Starts `billing serve` on a free port and returns it with its address.
pub fn serve(database_url: &str, extra: &[&str]) -> (Process, String) {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = billing(&args, database_url);
    let addr = server.serving_addr();
    (server, addr)
}
