//! The terminal UI: ratatui drawing as a pure function of state
