//! `ordergate check`: every shipped config passes, and a broken one gets every
//! problem reported in one run with exit 1.

mod support;

use std::process::Command;

use support::{bin, TempFile};

fn check(path: &std::path::Path) -> (bool, String, String) {
    let output = Command::new(bin())
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("run ordergate check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("conf/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (ok, stdout, stderr) = check(&path);
            assert!(ok, "{} fails check:\n{stderr}", path.display());
            assert!(
                stdout.contains("routes (") && stdout.contains("pools ("),
                "{stdout}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected conf/ordergate.toml and conf/demo.toml"
    );
}

#[test]
fn three_mistakes_are_all_reported_with_exit_1() {
    let config = TempFile::new(
        "bad.toml",
        r#"
[server]
listen = ["127.0.0.1:8080"]

[[pools]]
name = "orders"
balance = "fastest"
connect_timeout = "500"
backends = [ { addr = "127.0.0.1:9001" } ]

[[routes]]
name = "checkout"
path_prefix = "/api/orders"
pool = "payment"
"#,
    );
    let (ok, _, stderr) = check(&config.path);
    assert!(!ok, "check must fail");
    for expected in [
        "3 problems",
        "pools[0] \"orders\".balance: \"fastest\" is not an algorithm",
        "pools[0] \"orders\".connect_timeout: \"500\" has no unit",
        "routes[0] \"checkout\": pool \"payment\" is not defined (defined: orders)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn unreadable_and_unknown_keys_are_clear_errors() {
    let (ok, _, stderr) = check(std::path::Path::new("/nonexistent/ordergate.toml"));
    assert!(!ok);
    assert!(
        stderr.contains("cannot read config file /nonexistent/ordergate.toml"),
        "{stderr}"
    );

    let typo = TempFile::new("typo.toml", "[server]\nlisen = [\"127.0.0.1:1\"]\n");
    let (ok, _, stderr) = check(&typo.path);
    assert!(!ok);
    assert!(stderr.contains("unknown field `lisen`"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_broken_pages_directory_is_a_config_error() {
    let pages = TempFile::new("en.toml", "[ui]\nrequest_id_label = \"Request id\"\n");
    let dir = pages.path.parent().expect("dir").display().to_string();
    let config = TempFile::new(
        "pages.toml",
        &format!("[server]\npages = \"{dir}\"\n[[pools]]\nname = \"p\"\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n[[routes]]\nname = \"r\"\npool = \"p\"\n"),
    );
    let (ok, _, stderr) = check(&config.path);
    assert!(!ok, "a language file without its page kinds must fail");
    assert!(
        stderr.contains("server.pages") && stderr.contains("en.toml"),
        "{stderr}"
    );
}
