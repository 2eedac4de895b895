//! Records the git revision ordergate is built from, for `ordergate_build_info`
//! and `--version`. Outside a git checkout (a source tarball) it is "unknown".

use std::process::Command;

fn main() {
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty());
    let revision = revision.unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ORDERGATE_REVISION={revision}");
    // A new commit changes HEAD or the branch it points to.
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        if let Some(reference) = head.strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=.git/{}", reference.trim());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
