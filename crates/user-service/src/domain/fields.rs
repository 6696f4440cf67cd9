//! Parse-don't-validate types for the fields of an account. Each `parse`
//! returns the normalised value or a description of what is wrong, phrased
//! for a field violation.

/// A lower-cased email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Longest address accepted (RFC 5321's path limit).
    pub const MAX_LEN: usize = 254;

    /// Checks the shape `local@domain.tld` and lower-cases it.
    pub fn parse(raw: &str) -> Result<Email, String> {
        if raw.is_empty() {
            return Err("is required".into());
        }
        if raw.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        let invalid = || "is not a valid email address".to_owned();
        let (local, domain) = raw.split_once('@').ok_or_else(invalid)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local.chars().all(|c| {
                c.is_ascii_graphic()
                    && !matches!(
                        c,
                        '@' | '<' | '>' | '(' | ')' | ',' | ';' | ':' | '\\' | '"' | '[' | ']'
                    )
            })
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..");
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !(local_ok && domain_ok) {
            return Err(invalid());
        }
        Ok(Email(raw.to_ascii_lowercase()))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A lower-cased username: 3 to 32 characters of `a-z 0-9 _ . -`, starting
/// with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    /// Shortest username.
    pub const MIN_LEN: usize = 3;
    /// Longest username.
    pub const MAX_LEN: usize = 32;

    /// Checks the rules and lower-cases.
    pub fn parse(raw: &str) -> Result<Username, String> {
        if raw.is_empty() {
            return Err("is required".into());
        }
        let lower = raw.to_ascii_lowercase();
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&lower.len()) {
            return Err(format!(
                "must be {} to {} characters",
                Self::MIN_LEN,
                Self::MAX_LEN
            ));
        }
        if !lower.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err("must start with a letter".into());
        }
        if !lower
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
        {
            return Err("may only contain letters, digits, '_', '.' and '-'".into());
        }
        Ok(Username(lower))
    }

    /// The username.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A first or last name: 1 to 100 characters, trimmed, no control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    /// Longest name, in characters.
    pub const MAX_CHARS: usize = 100;

    /// Trims and checks.
    pub fn parse(raw: &str) -> Result<PersonName, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("is required".into());
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(PersonName(trimmed.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text about the user: at most 500 characters; line breaks allowed,
/// other control characters not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bio(String);

impl Bio {
    /// Longest bio, in characters.
    pub const MAX_CHARS: usize = 500;

    /// Trims and checks; empty is allowed (it clears the bio).
    pub fn parse(raw: &str) -> Result<Bio, String> {
        let trimmed = raw.trim();
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        if trimmed
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err("must not contain control characters".into());
        }
        Ok(Bio(trimmed.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lower_cased_and_checked() {
        assert_eq!(
            Email::parse("Ada@Example.COM").unwrap().as_str(),
            "ada@example.com"
        );
        assert!(Email::parse("first.last+tag@sub.example.org").is_ok());
        for bad in [
            "",
            "plain",
            "@example.com",
            "ada@",
            "ada@example",
            "ada@@example.com",
            "ada@exa mple.com",
            "ada@-example.com",
            ".ada@example.com",
            "a..b@example.com",
            "ada example@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn usernames_follow_the_rules() {
        assert_eq!(
            Username::parse("Ada_L.ove-1").unwrap().as_str(),
            "ada_l.ove-1"
        );
        for bad in ["", "ab", "1ada", "_ada", "ada lovelace", "ada@home", "ädä"] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Username::parse(&"a".repeat(32)).is_ok());
        assert!(Username::parse(&"a".repeat(33)).is_err());
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(PersonName::parse("  Ada ").unwrap().as_str(), "Ada");
        assert!(PersonName::parse("   ").is_err());
        assert!(PersonName::parse(&"é".repeat(100)).is_ok());
        assert!(PersonName::parse(&"é".repeat(101)).is_err());
        assert!(PersonName::parse("Ada\u{0}").is_err());
    }

    #[test]
    fn bios_may_be_empty_but_not_huge() {
        assert_eq!(Bio::parse("").unwrap().as_str(), "");
        assert!(Bio::parse("line one\nline two").is_ok());
        assert!(Bio::parse(&"x".repeat(501)).is_err());
        assert!(Bio::parse("bell\u{7}").is_err());
    }
}
