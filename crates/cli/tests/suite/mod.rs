mod backends;
mod config;
mod exec;
mod history_hardening;
mod interactive;
mod tui;
