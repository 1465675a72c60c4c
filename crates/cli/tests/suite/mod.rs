mod backends;
mod config;
mod exec;
mod interactive;
mod tui;
