//! The dashboard's named operators: `http_tokens` (`alice:TOKEN,bob:…`) and
//! `http_tokens_file` (one `name:sha256:HEX` a line), so that the audit
//! trail can say who changed what. Tokens are secrets: no error, log or
//! `Debug` output ever shows one.

use super::ConfigError;
use std::path::Path;

/// The shortest token accepted (`http_token` and each operator's).
pub(crate) const MIN_TOKEN_CHARS: usize = 16;
/// The longest operator name.
const MAX_NAME_CHARS: usize = 64;
/// The prefix of a token given by its SHA-256 (64 hex digits).
const SHA256: &str = "sha256:";

/// What proves an operator: the token itself, or its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum TokenSecret {
    /// The token (from `http_tokens`).
    Plain(String),
    /// The token's SHA-256 (`sha256:HEX`, as `beat token` prints it).
    Sha256([u8; 32]),
}

/// One operator of the dashboard: a name (which the audit trail shows)
/// and what proves it.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken {
    name: String,
    pub(crate) secret: TokenSecret,
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:***", self.name)
    }
}

impl OperatorToken {
    /// The operator's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An operator known by their token's SHA-256 (as `http_tokens_file`
    /// holds them); an error if the name cannot be one.
    pub fn hashed(name: &str, sha256: [u8; 32]) -> Result<Self, ConfigError> {
        check_name(name, "http_tokens_file")?;
        Ok(OperatorToken {
            name: name.to_owned(),
            secret: TokenSecret::Sha256(sha256),
        })
    }

    /// The operator's line for `http_tokens_file` (`name:sha256:HEX`), if
    /// known by a hash.
    pub fn file_line(&self) -> Option<String> {
        match &self.secret {
            TokenSecret::Sha256(hash) => {
                let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                Some(format!("{}:{SHA256}{hex}", self.name))
            }
            TokenSecret::Plain(_) => None,
        }
    }

    /// Reads one `name:token` or `name:sha256:HEX` entry, found `at` (a
    /// key's entry, a file's line). The reason never repeats the token.
    fn parse(entry: &str, hashed_only: bool, at: &str) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::Tokens {
            at: at.to_owned(),
            reason,
        };
        let (name, token) = entry
            .split_once(':')
            .ok_or_else(|| bad("expected name:token (or name:sha256:HEX)".into()))?;
        let name = name.trim();
        check_name(name, at)?;
        let token = token.trim();
        let secret = match token.strip_prefix(SHA256) {
            Some(hex) => TokenSecret::Sha256(
                sha256_hex(hex)
                    .ok_or_else(|| bad(format!("operator {name}: sha256: needs 64 hex digits")))?,
            ),
            None if hashed_only => {
                return Err(bad(format!(
                    "operator {name}: a tokens file holds each token's sha256:HEX, never the token (`beat token {name}` prints both)"
                )))
            }
            None if token.chars().count() < MIN_TOKEN_CHARS => {
                return Err(bad(format!(
                    "operator {name}: token too short: use at least {MIN_TOKEN_CHARS} characters"
                )))
            }
            None => TokenSecret::Plain(token.to_owned()),
        };
        Ok(OperatorToken {
            name: name.to_owned(),
            secret,
        })
    }
}

/// An operator's name: shown in the audit trail and on pages (escaped),
/// so anything printable but the list's separators.
fn check_name(name: &str, at: &str) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::Tokens {
        at: at.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("an operator needs a name before the ':'".into()));
    }
    if name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(|c| c.is_control() || c == ',' || c == ':')
    {
        return Err(bad(format!(
            "operator name {name:?}: use at most {MAX_NAME_CHARS} printable characters, without ',' or ':'"
        )));
    }
    Ok(())
}

fn sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Reads `http_tokens`: `name:token` entries separated by commas.
/// `http_token`: one token every operator shares (at least
/// `MIN_TOKEN_CHARS` characters).
pub(super) fn shared_token(key: &'static str, value: &str) -> Result<Option<String>, ConfigError> {
    if value.chars().count() < MIN_TOKEN_CHARS {
        return Err(ConfigError::Invalid {
            key,
            // The token is a secret, even a bad one.
            value: "***".to_owned(),
            reason: "too short: use at least 16 characters",
        });
    }
    Ok(Some(value.to_owned()))
}

/// `http_tokens`, read by [`parse_list`].
pub(super) fn named_tokens(
    _key: &'static str,
    value: &str,
) -> Result<Vec<OperatorToken>, ConfigError> {
    parse_list(value)
}

pub(super) fn parse_list(value: &str) -> Result<Vec<OperatorToken>, ConfigError> {
    let mut operators = Vec::new();
    for (i, entry) in value.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let at = format!("http_tokens, entry {}", i + 1);
        let operator = OperatorToken::parse(entry, false, &at)?;
        operators.push(operator);
    }
    check_unique(&operators, "http_tokens")?;
    Ok(operators)
}

/// Reads a tokens file (`http_tokens_file`): one `name:sha256:HEX` a line;
/// blank lines and `#` comments are skipped.
pub fn read_tokens_file(path: &Path) -> Result<Vec<OperatorToken>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut operators = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let operator = OperatorToken::parse(line, true, &format!("{shown}:{}", index + 1))?;
        operators.push(operator);
    }
    check_unique(&operators, &shown)?;
    Ok(operators)
}

/// Two operators of one name could not be told apart in the audit trail.
pub(crate) fn check_unique(operators: &[OperatorToken], at: &str) -> Result<(), ConfigError> {
    for (i, a) in operators.iter().enumerate() {
        if operators[..i].iter().any(|b| b.name == a.name) {
            return Err(ConfigError::Tokens {
                at: at.to_owned(),
                reason: format!("operator {} is named twice", a.name),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_names_its_operators_and_never_repeats_a_token() {
        let list = parse_list(
            "alice:alice-token-0123456789, bob:sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name(), "alice");
        // (No Debug for a secret: compared, never printed.)
        assert!(list[0].secret == TokenSecret::Plain("alice-token-0123456789".into()));
        assert!(matches!(list[1].secret, TokenSecret::Sha256(h) if h[0] == 0x9f && h[31] == 0x08));
        assert_eq!(format!("{list:?}"), "[alice:***, bob:***]");

        for (bad, says) in [
            ("alice", "expected name:token"),
            (":some-long-token-0123", "needs a name"),
            ("alice:short-secret", "too short"),
            ("alice:sha256:abc", "64 hex digits"),
            ("al\u{7}ice:some-long-token-0123", "printable"),
            (
                "a:some-long-token-0123,a:other-long-token-0123",
                "named twice",
            ),
        ] {
            let e = parse_list(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(
                !e.contains("short-secret") && !e.contains("long-token"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_hashed_operator_writes_the_line_a_tokens_file_reads() {
        let hash = [0xabu8; 32];
        let line = OperatorToken::hashed("erin", hash)
            .unwrap()
            .file_line()
            .unwrap();
        assert_eq!(line, format!("erin:sha256:{}", "ab".repeat(32)));
        let read = OperatorToken::parse(&line, true, "test").unwrap();
        assert!(read.secret == TokenSecret::Sha256(hash) && read.name() == "erin");
        let e = OperatorToken::hashed("x,y", hash).unwrap_err().to_string();
        assert!(e.contains("without ',' or ':'"), "{e}");
    }

    #[test]
    fn a_tokens_file_holds_hashes_only() {
        let dir = std::env::temp_dir().join(format!("cdk-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        std::fs::write(&path, format!("# operators\n\ncarol:sha256:{hash}\n")).unwrap();
        let read = read_tokens_file(&path).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].name(), "carol");
        std::fs::write(&path, "carol:plain-token-0123456789\n").unwrap();
        let e = read_tokens_file(&path).unwrap_err().to_string();
        assert!(e.contains(":1:") || e.contains(":1"), "{e}");
        assert!(
            e.contains("sha256:HEX") && !e.contains("plain-token"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
