//! Placeholder until the TUI demo lands.
fn main() {}
