//! Placeholder: criterion micro benchmarks of the hot path.
fn main() {}
