//! What configuration never prints: passwords in URLs (masked in logs,
//! errors and pages) and the operators' tokens.

/// `url` with any password replaced by `***`, for logs and errors.
///
/// ```
/// use celery_diesel_kit::redact_url;
/// assert_eq!(redact_url("redis://:s3cret@host:6379/0"), "redis://:***@host:6379/0");
/// assert_eq!(redact_url("postgres://app:pw@db/app"), "postgres://app:***@db/app");
/// assert_eq!(redact_url("sqlite://beat.sqlite3"), "sqlite://beat.sqlite3");
/// // kombu's failover list: each URL masked.
/// assert_eq!(redact_url("amqp://u:a@h1//;amqp://u:b@h2//"), "amqp://u:***@h1//;amqp://u:***@h2//");
/// ```
pub fn redact_url(url: &str) -> String {
    urls_in(url)
        .into_iter()
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(";")
}

/// The URLs of kombu's failover list `url1;url2` (one URL alone is a list
/// of one). A ';' that starts another URL (a scheme and "://") separates
/// them; any other ';' may belong to a password.
fn urls_in(list: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        rest.find("://").is_some_and(|end| {
            end > 0
                && rest[..end]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        })
    };
    let mut urls = Vec::new();
    let mut start = 0;
    for (i, _) in list.match_indices(';') {
        if starts_url(&list[i + 1..]) {
            urls.push(&list[start..i]);
            start = i + 1;
        }
    }
    urls.push(&list[start..]);
    urls
}

fn redact_one(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    // The authority ends at the first '/', '?' or '#'; the userinfo at the
    // authority's last '@' (a password may itself contain '@').
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return mask_query_password(url);
    };
    let userinfo = &authority[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => userinfo.to_owned(),
    };
    mask_query_password(&format!(
        "{}{}{}",
        &url[..scheme_end + 3],
        user,
        &rest[at..]
    ))
}

/// `message` with `url` and its password masked, for errors that quote a
/// driver's text (a driver may repeat the URL or the password).
pub(crate) fn redact_message(message: &str, url: &str) -> String {
    let mut message = message.replace(url, &redact_url(url));
    // Each URL of a failover list, which a driver may quote alone.
    for one in urls_in(url) {
        message = message.replace(one, &redact_one(one));
        if let Some(password) = password_of(one) {
            if !password.is_empty() {
                message = message.replace(&password, "***");
            }
        }
    }
    message
}

fn password_of(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    Some(userinfo.split_once(':')?.1.to_owned())
}

/// Masks `password=` query parameters (libpq and redis accept them).
fn mask_query_password(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let (head, query) = url.split_at(q + 1);
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
            _ => param.to_owned(),
        })
        .collect();
    format!("{head}{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn messages_lose_the_password() {
        let url = "postgres://app:hunter2@db/app";
        assert_eq!(
            redact_message(
                "could not connect to postgres://app:hunter2@db/app: hunter2?",
                url
            ),
            "could not connect to postgres://app:***@db/app: ***?"
        );
        // A failover list: a driver quoting its second URL alone, or that
        // URL's password, shows neither.
        let list = "redis://:one@h1/0;redis://:two@h2/0";
        assert_eq!(
            redact_message("h2 refused redis://:two@h2/0 (password two)", list),
            "h2 refused redis://:***@h2/0 (password ***)"
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact_url("postgres://u:p%40ss@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("rediss://default:a@b@host/0"),
            "rediss://default:***@host/0"
        );
        assert_eq!(redact_url("redis://user@host/0"), "redis://user@host/0");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=secret&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(redact_url("beat.sqlite3"), "beat.sqlite3");
        // kombu's failover list: every URL in it is masked; a ';' that
        // starts no URL is part of a password.
        assert_eq!(
            redact_url("redis://:one@h1/0;redis://:two@h2/0;rediss://u:three@h3/0"),
            "redis://:***@h1/0;redis://:***@h2/0;rediss://u:***@h3/0"
        );
        assert_eq!(redact_url("amqp://u:pa;ss@h//"), "amqp://u:***@h//");
        let c = Config {
            broker_url: Some("redis://:hunter2@h/1".into()),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
