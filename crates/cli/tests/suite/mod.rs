mod backends;
mod config;
mod exec;
mod first_hour;
mod history_hardening;
mod interactive;
mod tui;
mod vm;
