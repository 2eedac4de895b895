//! Running out of file descriptors: every shopper connection and every backend
//! connection needs one, so at the process's limit new shoppers wait in the
//! listen backlog and new backend connections cannot be opened. That is the
//! operator's to fix (the open-files limit), said once per episode rather than
//! on every failed accept or connect, and counted in
//! `ordergate_framework_events_total{event="descriptor_limit"}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::FrameworkEvent;

/// Quiet time after which the limit counts as a new episode (logged again).
const EPISODE_GAP: Duration = Duration::from_secs(60);

/// The process's clock origin for [`LAST_SEEN_MS`].
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);
/// When the limit was last hit, in ms after [`ORIGIN`] plus one (0: never).
static LAST_SEEN_MS: AtomicU64 = AtomicU64::new(0);

/// Whether an I/O error is the process (`EMFILE`) or the system (`ENFILE`)
/// out of file descriptors.
pub fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    let code = error.raw_os_error();
    code == Some(Errno::EMFILE as i32) || code == Some(Errno::ENFILE as i32)
}

/// Whether one of pingora's records is its listener failing to accept for
/// lack of descriptors (`Accept() failed ... Too many open files (os error 24)`).
pub fn is_accept_out_of_descriptors(target: &str, message: &str) -> bool {
    target.starts_with("pingora_core::services::listening")
        && message.starts_with("Accept() failed")
        && [Errno::EMFILE, Errno::ENFILE]
            .iter()
            .any(|code| message.contains(&format!("(os error {})", *code as i32)))
}

/// Records that `what` (e.g. "accepting shoppers' connections") failed for
/// lack of file descriptors: counted every time, logged once per episode.
pub fn out_of_descriptors(what: &str) {
    FrameworkEvent::DescriptorLimit.count();
    let now = ORIGIN.elapsed().as_millis() as u64 + 1;
    let last = LAST_SEEN_MS.swap(now, Ordering::Relaxed);
    if last == 0 || now.saturating_sub(last) >= EPISODE_GAP.as_millis() as u64 {
        log::warn!(
            "out of file descriptors while {what}: new shoppers wait in the listen backlog \
             and connections that are open keep being served; raise the open-files limit \
             (LimitNOFILE). Logged once; every hit is counted in \
             ordergate_framework_events_total{{event=\"descriptor_limit\"}}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_accept_failures_for_descriptors_are_recognised() {
        let target = "pingora_core::services::listening";
        assert!(is_accept_out_of_descriptors(
            target,
            "Accept() failed  AcceptError context: Fail to accept() cause: Too many open files (os error 24)"
        ));
        assert!(!is_accept_out_of_descriptors(
            target,
            "Accept() failed  AcceptError cause: Connection aborted (os error 103)"
        ));
        assert!(!is_accept_out_of_descriptors(
            "pingora_core::connectors",
            "Accept() failed (os error 24)"
        ));
    }

    #[test]
    fn only_descriptor_errors_count() {
        assert!(is_out_of_descriptors(&std::io::Error::from_raw_os_error(
            Errno::EMFILE as i32
        )));
        assert!(is_out_of_descriptors(&std::io::Error::from_raw_os_error(
            Errno::ENFILE as i32
        )));
        assert!(!is_out_of_descriptors(&std::io::Error::from_raw_os_error(
            Errno::ECONNREFUSED as i32
        )));
    }
}
