//! No secret is ever printed: every subcommand, handed a database URL with
//! a password that cannot be used (a bad port, a driver the service does
//! not have, a server that is not there), fails without the password
//! anywhere in what it prints, whether the URL came by flag or environment.

use std::process::{Command, Stdio};

const SECRET: &str = "S3CRET";

/// Runs `billing ARGS` with `env` and returns whether it succeeded and
/// everything it printed.
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_billing"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_READ_URL")
        .envs(env.iter().copied())
        .env("RUST_LOG", "debug")
        .env("DATABASE_ACQUIRE_TIMEOUT_MS", "300")
        .stdin(Stdio::null())
        .output()
        .expect("billing runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

#[test]
fn no_subcommand_prints_a_database_password() {
    let urls = [
        format!("postgres://u:{SECRET}@127.0.0.1:99999/x"),
        format!("mysql://u:{SECRET}@127.0.0.1:3306/x"),
        format!("postgres://u:{SECRET}@127.0.0.1:1/x"),
        format!("postgres://u@127.0.0.1:99999/x?password={SECRET}"),
    ];
    let subcommands: [&[&str]; 4] = [
        &["migrate"],
        &["demo-data"],
        &["create-admin", "--username", "root"],
        &["serve", "--listen", "127.0.0.1:0"],
    ];
    let mut cases = Vec::new();
    for url in &urls {
        for subcommand in subcommands {
            let mut by_flag = vec!["--database-url", url.as_str()];
            by_flag.extend_from_slice(subcommand);
            cases.push((by_flag, vec![]));
            cases.push((subcommand.to_vec(), vec![("DATABASE_URL", url.as_str())]));
        }
        // A read replica that cannot be used, beside a primary that can.
        cases.push((
            vec![
                "--database-url",
                "sqlite::memory:",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-read-url",
                url.as_str(),
            ],
            vec![],
        ));
    }
    std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|(args, env)| scope.spawn(move || (args, run(args, env))))
            .collect();
        for handle in runs {
            let (args, (succeeded, printed)) = handle.join().expect("no panic");
            assert!(!succeeded, "{args:?} should fail: {printed}");
            assert!(!printed.is_empty(), "{args:?} says why it failed");
            assert!(
                !printed.contains(SECRET),
                "{args:?} printed the password: {printed}"
            );
        }
    });
}

/// At a terminal, `create-admin` asks for the password (twice) and does
/// not echo it; `script` gives it a pseudo-terminal, with echo on as a
/// terminal has it, and the test types each line once the prompt is shown.
#[test]
fn create_admin_at_a_terminal_prompts_without_echoing_the_password() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let command = format!(
        "{} --database-url sqlite://{}/billing.db create-admin root",
        env!("CARGO_BIN_EXE_billing"),
        dir.path().display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script` runs");
    let shown = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let shown = shown.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 1024];
            while let Ok(read) = stdout.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                shown
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..read]));
            }
        })
    };
    let wait_for = |text: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !shown.lock().unwrap().contains(text) {
            assert!(
                std::time::Instant::now() < deadline,
                "no `{text}` at the terminal: {:?}",
                shown.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    const TYPED: &str = "typed at a terminal 12345";
    let mut stdin = child.stdin.take().unwrap();
    wait_for("Password for admin root");
    stdin.write_all(format!("{TYPED}\n").as_bytes()).unwrap();
    wait_for("Repeat it");
    stdin.write_all(format!("{TYPED}\n").as_bytes()).unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let shown = shown.lock().unwrap().clone();
    assert!(status.success(), "{shown}");
    assert!(shown.contains("admin account root created"), "{shown}");
    assert!(!shown.contains(TYPED), "the password was echoed: {shown}");
}
