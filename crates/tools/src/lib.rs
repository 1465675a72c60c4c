//! The agent's tools (read_file, write_file, edit_file, bash) over a Sandbox, with path confinement
