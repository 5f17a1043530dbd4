//! `gatehouse`: one binary for every role (DESIGN §1).
//!
//! Layout:
//! - `cli`: the commands and flags.
//! - `config`: typed configuration from file, environment and flags.
//! - `app`: wiring of the roles into a running [`app::Application`].
//! - `keys`: `gatehouse keys rotate|list`.
//! - `users`: `gatehouse users grant-role|revoke-role|list`.
//! - `telemetry`: logging.

mod app;
mod cli;
mod config;
mod keys;
mod mail;
mod telemetry;
mod users;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gatehouse: {error:#}");
            ExitCode::FAILURE
        }
    }
}
