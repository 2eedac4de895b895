//! Placeholder: the load harness (scenarios against ordergate, nginx and HAProxy).
fn main() {}
