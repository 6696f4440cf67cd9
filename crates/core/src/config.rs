//! Parsing a binary's configuration the same way in every service: on a bad
//! flag or environment variable, one line on stderr and exit code 64
//! (`EX_USAGE`), so that orchestrators and humans see the cause at once.

use clap::{Parser, error::ErrorKind};

/// Exit code for configuration errors (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// A setting that is present but unusable (a bad key file, an invalid
/// bootstrap account), found while starting up; binaries exit with code 64
/// and this message. The message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Parses `C` from the command line and environment, or exits: with the
/// help or version text and code 0 when asked for, otherwise with one line
/// naming the bad setting and code 64.
pub fn parse_or_exit<C: Parser>() -> C {
    match C::try_parse() {
        Ok(config) => config,
        Err(err) => exit_on_parse_error(err),
    }
}

/// Exits for a failed parse: with the help or version text and code 0 when
/// that was asked for, otherwise with one line naming the bad setting and
/// code 64.
pub fn exit_on_parse_error(err: clap::Error) -> ! {
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => err.exit(),
        _ => exit_with_config_error(&first_line(&err.render().to_string())),
    }
}

/// Prints `message` as one line prefixed with the binary's name and exits 64.
pub fn exit_with_config_error(message: &str) -> ! {
    let bin = std::env::args()
        .next()
        .and_then(|arg0| {
            std::path::Path::new(&arg0)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "shop".to_owned());
    eprintln!("{bin}: configuration error: {message}");
    std::process::exit(EXIT_CONFIG)
}

/// `url` with any password replaced by `***`, for error messages and logs
/// (database URLs carry credentials).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn first_line(rendered: &str) -> String {
    rendered
        .lines()
        .next()
        .unwrap_or("invalid configuration")
        .trim_start_matches("error: ")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://shop:s3cret@db:5432/users"),
            "postgres://shop:***@db:5432/users"
        );
        assert_eq!(
            redact_url("sqlite://data/users.db"),
            "sqlite://data/users.db"
        );
        assert_eq!(
            redact_url("postgres://shop@db/users"),
            "postgres://shop@db/users"
        );
    }

    #[test]
    fn only_the_first_line_is_kept() {
        let rendered =
            "error: invalid value 'x' for '--port <PORT>'\n\nFor more information, try '--help'.\n";
        assert_eq!(
            first_line(rendered),
            "invalid value 'x' for '--port <PORT>'"
        );
    }
}
