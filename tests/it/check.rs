//! `ordergate check`: every shipped config passes, and a broken one gets every
//! problem reported in one run with exit 1.

use crate::support::TempFile;

fn check(path: &std::path::Path) -> (bool, String, String) {
    let checked = crate::support::check(path);
    (checked.ok, checked.stdout, checked.stderr)
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
    assert!(
        stderr.contains("server.lisen: unknown key; did you mean `listen`?"),
        "{stderr}"
    );
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

/// Issue 17, item 4: unknown keys and wrong types are problems like the others,
/// with key paths, what was expected and a suggestion for near misses, all
/// reported together with the semantic problems of the rest of the file.
#[test]
fn unknown_keys_and_wrong_types_are_reported_with_everything_else() {
    let config = TempFile::new(
        "mixed.toml",
        r#"
[server]
threds = 4
grace_period = 5

[[pools]]
name = "orders"
balance = "fastest"
max_in_flight = "64"
backends = [ { addr = "127.0.0.1:9001", wieght = 2 } ]

[[routes]]
name = "checkout"
pool = "payment"
methods = "POST"
"#,
    );
    let (ok, _, stderr) = check(&config.path);
    assert!(!ok, "check must fail");
    for expected in [
        "7 problems",
        "server.threds: unknown key; did you mean `threads`?",
        "server.grace_period: expected a duration in quotes with a unit",
        "pools[0] \"orders\".max_in_flight: expected a whole number, found the string \"64\"; write it without quotes: 64",
        "pools[0] \"orders\".backends[0].wieght: unknown key; did you mean `weight`?",
        "routes[0] \"checkout\".methods: expected a list of strings",
        "pools[0] \"orders\".balance: \"fastest\" is not an algorithm",
        "routes[0] \"checkout\": pool \"payment\" is not defined (defined: orders)",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("invalid type"), "{stderr}");
}

/// `[pools]` written for `[[pools]]` gets an operator's explanation.
#[test]
fn a_single_bracket_pools_table_is_explained() {
    let config = TempFile::new(
        "single.toml",
        "[pools]\nname = \"p\"\nbackends = [ { addr = \"127.0.0.1:9001\" } ]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
    );
    let (ok, _, stderr) = check(&config.path);
    assert!(!ok);
    assert!(
        stderr.contains("pools: [pools] makes a single table, but pools is a list: write [[pools]] (double brackets) before each entry"),
        "{stderr}"
    );
    assert!(!stderr.contains("expected a sequence"), "{stderr}");
}

/// Issue 17, item 1 (check side): certificates and keys are loaded and checked.
#[test]
fn check_loads_certificates_and_names_the_bad_file() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let other =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert = TempFile::new("cert.pem", &certified.cert.pem());
    let key = TempFile::new("key.pem", &certified.signing_key.serialize_pem());
    let other_key = TempFile::new("other-key.pem", &other.signing_key.serialize_pem());
    let config = |cert: &std::path::Path, key: &std::path::Path| {
        TempFile::new(
            "tls.toml",
            &format!(
                "[[server.tls]]\nlisten = \"127.0.0.1:8443\"\ncert = \"{}\"\nkey = \"{}\"\n[[pools]]\nname = \"p\"\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
                cert.display(),
                key.display()
            ),
        )
    };
    let good = config(&cert.path, &key.path);
    let (ok, _, stderr) = check(&good.path);
    assert!(ok, "{stderr}");

    let swapped = config(&key.path, &cert.path);
    let (ok, _, stderr) = check(&swapped.path);
    assert!(!ok);
    assert!(
        stderr.contains("server.tls[0].cert:")
            && stderr.contains(&key.path.display().to_string())
            && stderr.contains("swapped"),
        "{stderr}"
    );

    let mismatched = config(&cert.path, &other_key.path);
    let (ok, _, stderr) = check(&mismatched.path);
    assert!(!ok);
    assert!(
        stderr.contains("server.tls[0].key:")
            && stderr.contains("is not the key of the certificate"),
        "{stderr}"
    );
}

/// Issue 17, item 2 (check side): listeners must not overlap.
#[test]
fn check_rejects_overlapping_listeners() {
    let config = TempFile::new(
        "overlap.toml",
        "[server]\nlisten = [\"127.0.0.1:8080\", \"0.0.0.0:8081\", \"127.0.0.1:8081\"]\n[admin]\nlisten = \"127.0.0.1:8080\"\n[[pools]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
    );
    let (ok, _, stderr) = check(&config.path);
    assert!(!ok);
    assert!(
        stderr.contains("admin.listen: 127.0.0.1:8080 is also server.listen[0]"),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("server.listen[2]: 127.0.0.1:8081 overlaps server.listen[1] (0.0.0.0:8081)"),
        "{stderr}"
    );
}
