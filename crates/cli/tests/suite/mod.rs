mod backends;
mod config;
mod docker;
mod exec;
mod first_hour;
mod history_hardening;
mod interactive;
mod tui;
