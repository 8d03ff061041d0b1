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
