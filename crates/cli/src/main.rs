//! shopctl: a command-line client over shop's generated gRPC clients, for
//! people (tables) and scripts (JSON lines, exit codes per gRPC status).
//!
//! - [`cli`]: commands, flags and environment variables.
//! - [`commands`]: what each command does.
//! - [`session`]: the token pair `login` keeps in the config directory.
//! - [`render`]: tables and JSON.

mod catalogue;
mod cli;
mod commands;
mod render;
mod session;

use std::process::ExitCode;

use clap::Parser as _;
use tonic::Status;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => match error.downcast_ref::<Status>() {
            Some(status) => {
                eprintln!(
                    "shopctl: {}: {}",
                    code_name(status.code()),
                    status.message()
                );
                ExitCode::from(exit_code(status.code()))
            }
            None => {
                eprintln!("shopctl: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// 10 + the gRPC code, as documented in `--help`.
fn exit_code(code: tonic::Code) -> u8 {
    10 + code as u8
}

/// `NOT_FOUND` and friends, as in the gRPC documentation.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(exit_code(tonic::Code::NotFound), 15);
        assert_eq!(exit_code(tonic::Code::Unauthenticated), 26);
        assert_eq!(exit_code(tonic::Code::Unavailable), 24);
        assert!(cli::EXIT_CODES.contains("15 NOT_FOUND"));
        assert!(cli::EXIT_CODES.contains("26 UNAUTHENTICATED"));
        assert!(cli::EXIT_CODES.contains("24 UNAVAILABLE"));
    }
}
