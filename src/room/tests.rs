//! The room's policy on a paused clock: who passes, who waits, what the page says.

use super::*;
