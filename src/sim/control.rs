//! How a request handler asks its connection task to break the connection
//! (the service decides, the connection carries it out: see `conn`).

use parking_lot::Mutex;

use tokio::sync::oneshot;

/// How a request handler wants its connection to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Abort {
    /// Close the connection normally (FIN) without answering.
    Close,
    /// Abort the connection with a TCP RST.
    Reset,
}

/// Lets the request handlers of one connection ask its task to break it.
#[derive(Debug)]
pub(crate) struct ConnControl {
    sender: Mutex<Option<oneshot::Sender<Abort>>>,
}

impl ConnControl {
    /// A control that sends its abort to `sender` (the connection task's).
    pub(crate) fn new(sender: oneshot::Sender<Abort>) -> ConnControl {
        ConnControl {
            sender: Mutex::new(Some(sender)),
        }
    }

    /// Asks the connection task to end the connection; the caller must then
    /// never answer. Only the first call has an effect.
    pub(crate) fn abort(&self, how: Abort) {
        if let Some(sender) = self.sender.lock().take() {
            // The task is gone only if the connection already ended.
            let _ = sender.send(how);
        }
    }
}
