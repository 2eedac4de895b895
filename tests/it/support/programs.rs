//! Programs the tests drive (a headless browser, promtool, systemd-analyze):
//! found on the machine, or installed from Debian's packages with apt-get when
//! missing, the way `./dev.sh test` installs what the build needs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// One apt-get at a time: two tests installing at once would fight over its lock.
static APT: Mutex<()> = Mutex::new(());

/// The first of `names` found on the PATH (or in /usr/sbin, /sbin).
pub fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A program, installed from Debian's `package` with apt-get when missing
/// (as root, or with `sudo -n`). `None` when it cannot be had.
pub fn ensure(names: &[&str], package: &str) -> Option<PathBuf> {
    let _apt = APT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = find(names) {
        return Some(found);
    }
    find(&["apt-get"])?;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    eprintln!(
        "tests: {} missing; installing {package} with apt-get",
        names[0]
    );
    if !apt(&["update", "-qq"]) {
        eprintln!("tests: apt-get update failed");
    }
    if !apt(&["install", "-y", "-qq", package]) {
        eprintln!("tests: apt-get install {package} failed");
    }
    find(names)
}

/// The names Chromium goes by.
const CHROMIUM: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

/// Chromium when it is on the machine (never installed).
pub fn find_chromium() -> Option<PathBuf> {
    find(&CHROMIUM)
}

/// Chromium, installed with apt-get when missing; when it cannot be had, says
/// that `what` is skipped and gives `None`.
pub fn chromium_or_skip(what: &str) -> Option<PathBuf> {
    let browser = ensure(&CHROMIUM, "chromium");
    if browser.is_none() {
        eprintln!("SKIPPED {what}: chromium is not installed and apt-get could not install it");
    }
    browser
}

/// Headless Chromium with `profile` as its own user data directory, without
/// the sandbox, the GPU, /dev/shm or the first-run dialogues; the caller adds
/// its flags and the URL.
pub fn headless_chromium(browser: &Path, profile: &Path) -> Command {
    let mut command = Command::new(browser);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}
