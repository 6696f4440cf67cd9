//! The session `shopctl login` stores: the token pair, in a file only the
//! user can read, refreshed automatically when the access token expires.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// What is kept between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    /// The access token.
    pub(crate) access_token: String,
    /// The refresh token.
    pub(crate) refresh_token: String,
}

impl Session {
    /// The session file in `dir`.
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join("session.json")
    }

    /// Reads the stored session.
    pub(crate) fn load(dir: &Path) -> anyhow::Result<Session> {
        let path = Session::path(dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no session in {} (run `shopctl login` first)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a session", path.display()))
    }

    /// Writes the session, readable by the user only.
    pub(crate) fn store(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = Session::path(dir);
        let tmp = path.with_extension("json.tmp");
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            let mut file = options
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Forgets the stored session.
    pub(crate) fn remove(dir: &Path) -> anyhow::Result<()> {
        match std::fs::remove_file(Session::path(dir)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The default configuration directory: `$XDG_CONFIG_HOME/shopctl`, else
/// `~/.config/shopctl`.
pub(crate) fn default_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("shopctl"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("shopctl")),
        None => bail!("set SHOPCTL_CONFIG_DIR, XDG_CONFIG_HOME or HOME"),
    }
}

/// The claims of a JWT read without verifying it (the client only needs
/// its own `sub` and `exp`; the servers verify).
#[derive(Debug, Deserialize)]
pub(crate) struct UnverifiedClaims {
    /// The user id.
    pub(crate) sub: String,
    /// Expiry, seconds since the epoch.
    pub(crate) exp: i64,
}

impl UnverifiedClaims {
    /// Reads the payload of `token`.
    pub(crate) fn of(token: &str) -> anyhow::Result<UnverifiedClaims> {
        let payload = token.split('.').nth(1).context("the token is not a JWT")?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .context("the token payload is not base64url")?;
        serde_json::from_slice(&json).context("the token payload is not the expected JSON")
    }

    /// True when the token expires within `margin_secs`.
    pub(crate) fn expires_within(&self, margin_secs: i64) -> bool {
        self.exp - chrono::Utc::now().timestamp() <= margin_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_round_trip_privately() {
        let dir = tempfile::tempdir().unwrap();
        let session = Session {
            access_token: "a".into(),
            refresh_token: "r".into(),
        };
        session.store(dir.path()).unwrap();
        let back = Session::load(dir.path()).unwrap();
        assert_eq!(back.access_token, "a");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(Session::path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        Session::remove(dir.path()).unwrap();
        assert!(Session::load(dir.path()).is_err());
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"u1","exp":4102444800}"#);
        let claims = UnverifiedClaims::of(&format!("h.{payload}.s")).unwrap();
        assert_eq!(claims.sub, "u1");
        assert!(!claims.expires_within(60));
        assert!(UnverifiedClaims::of("nope").is_err());
    }
}
