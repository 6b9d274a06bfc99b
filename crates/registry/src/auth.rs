//! `WWW-Authenticate` challenges and the token endpoint of Docker's token
//! authentication (GET with Basic credentials, or OAuth2 POST with a refresh token).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::credentials::Credential;

/// Client id sent to OAuth2 token endpoints.
const CLIENT_ID: &str = "kubectl-build";

/// How a registry wants requests authenticated, learnt from a 401 answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Basic realm="..."`: send the username and password on every request.
    Basic,
    /// `Bearer realm=...,service=...`: get a token for the scopes from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Picks the first challenge we support from `WWW-Authenticate` header values.
pub(crate) fn parse_challenge<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let mut basic = false;
    for header in headers {
        for (scheme, params) in split_challenges(header) {
            match scheme.to_ascii_lowercase().as_str() {
                "bearer" => {
                    if let Some(realm) = params.get("realm") {
                        return Some(Challenge::Bearer {
                            realm: realm.clone(),
                            service: params.get("service").cloned(),
                        });
                    }
                }
                "basic" => basic = true,
                _ => {}
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

/// Splits a header into `(scheme, params)` challenges. Parameters are
/// `key=token` or `key="quoted \"string\""`, separated by commas; a bare token
/// after a comma starts the next challenge.
fn split_challenges(header: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let chars: Vec<char> = header.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && (chars[*i].is_whitespace() || chars[*i] == ',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && !chars[*i].is_whitespace() && chars[*i] != ',' && chars[*i] != '='
        {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            // A stray '=' with no name: skip it.
            i += 1;
            continue;
        }
        // Look past spaces for '=' to tell a parameter from a new scheme.
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        if j < chars.len() && chars[j] == '=' && !out.is_empty() {
            i = j + 1;
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            let value = if i < chars.len() && chars[i] == '"' {
                i += 1;
                let mut v = String::new();
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    v.push(chars[i]);
                    i += 1;
                }
                i += 1;
                v
            } else {
                token(&mut i)
            };
            if let Some((_, params)) = out.last_mut() {
                params.insert(word.to_ascii_lowercase(), value);
            }
        } else {
            out.push((word, BTreeMap::new()));
        }
    }
    out
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    /// Seconds the token is valid for; absent means 60 (Docker's token
    /// specification).
    #[serde(default)]
    expires_in: Option<u64>,
}

/// How long a token is taken to be valid when its endpoint does not say
/// (`expires_in` absent or 0), as Docker's token specification defines.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A registry (Bearer) token and how long it is valid from when it was
/// handed over.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryToken {
    /// The token, sent as `Authorization: Bearer TOKEN`.
    pub token: String,
    /// How long it stays valid.
    pub expires_in: Duration,
}

impl fmt::Debug for RegistryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryToken")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// A registry's Bearer challenge and the scopes a token is wanted for:
/// what a build daemon sends its client so that the client gets the token
/// with its own credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The token endpoint (`realm` of the challenge).
    pub realm: String,
    /// The `service` of the challenge, if any.
    pub service: Option<String>,
    /// The scopes (`repository:team/app:pull,push`), each granted exactly.
    pub scopes: Vec<String>,
}

/// Why a token could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint rejected the credentials (401/403).
    #[error("the token endpoint refused (HTTP {0})")]
    Denied(u16),
    /// The endpoint could not be reached, or its answer broke off.
    #[error("token endpoint: {}", crate::client::error_chain(.0))]
    Transport(#[source] reqwest::Error),
    /// The endpoint answered with an error status.
    #[error("token endpoint {realm} answered HTTP {status}")]
    Status {
        /// The endpoint.
        realm: String,
        /// Its answer.
        status: reqwest::StatusCode,
    },
    /// The answer is not the token JSON.
    #[error("token endpoint {realm} sent no token JSON: {source}")]
    NotJson {
        /// The endpoint.
        realm: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The answer holds no token.
    #[error("token endpoint {realm} sent an empty token")]
    Empty {
        /// The endpoint.
        realm: String,
    },
}

/// Asks the token endpoint for a token covering `scopes`.
///
/// With an identity (refresh) token: OAuth2 POST `grant_type=refresh_token`.
/// Otherwise GET with `service` and `scope` parameters, with Basic credentials
/// when we have a username and password, anonymously when not.
pub(crate) async fn fetch_token(
    http: &reqwest::Client,
    realm: &str,
    service: Option<&str>,
    scopes: &[String],
    cred: Option<&Credential>,
) -> Result<RegistryToken, TokenError> {
    let request = match cred.and_then(|c| c.identity_token.as_deref()) {
        Some(refresh) => {
            let mut form: Vec<(&str, String)> = vec![
                ("grant_type", "refresh_token".into()),
                ("refresh_token", refresh.to_string()),
                ("client_id", CLIENT_ID.into()),
                ("scope", scopes.join(" ")),
            ];
            if let Some(service) = service {
                form.push(("service", service.to_string()));
            }
            http.post(realm).form(&form)
        }
        None => {
            let mut query: Vec<(&str, &str)> = Vec::new();
            if let Some(service) = service {
                query.push(("service", service));
            }
            for scope in scopes {
                query.push(("scope", scope));
            }
            let mut request = http.get(realm).query(&query);
            if let Some(Credential {
                username: Some(user),
                password,
                ..
            }) = cred
            {
                request = request.basic_auth(user, password.as_deref());
            }
            request
        }
    };
    let response = request.send().await.map_err(TokenError::Transport)?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(TokenError::Denied(status.as_u16()));
    }
    if !status.is_success() {
        return Err(TokenError::Status {
            realm: realm.to_string(),
            status,
        });
    }
    let body = response.bytes().await.map_err(TokenError::Transport)?;
    let answer: TokenAnswer =
        serde_json::from_slice(&body).map_err(|source| TokenError::NotJson {
            realm: realm.to_string(),
            source,
        })?;
    let expires_in = match answer.expires_in {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        _ => DEFAULT_TOKEN_LIFETIME,
    };
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .map(|token| RegistryToken { token, expires_in })
        .ok_or_else(|| TokenError::Empty {
            realm: realm.to_string(),
        })
}

/// Whether a build daemon may be handed a token for `scope`: a repository
/// scope whose actions are only `pull` and `push` (never `delete`, `*` or
/// the registry's catalog).
pub(crate) fn scope_allowed(scope: &str) -> bool {
    let mut parts = scope.splitn(3, ':');
    let (Some("repository"), Some(name), Some(actions)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    // A name may hold a port-less path only; a colon would be another field.
    !name.is_empty()
        && !name.contains(':')
        && !actions.is_empty()
        && actions.split(',').all(|a| a == "pull" || a == "push")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_params() {
        let c = parse_challenge([
            r#"Bearer realm="http://127.0.0.1:1/token",service="reg \"x\"",scope="repository:a/b:pull,push""#,
        ]);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: Some("reg \"x\"".into()),
            })
        );
    }

    #[test]
    fn only_repository_pull_and_push_scopes_are_handed_out() {
        for ok in [
            "repository:a/b:pull",
            "repository:a/b:pull,push",
            "repository:library/busybox:push",
        ] {
            assert!(scope_allowed(ok), "{ok}");
        }
        for refused in [
            "repository:a/b:*",
            "repository:a/b:pull,delete",
            "registry:catalog:*",
            "repository::pull",
            "repository:a/b:",
            "repository:a:b:pull",
            "",
        ] {
            assert!(!scope_allowed(refused), "{refused}");
        }
    }

    #[test]
    fn basic_challenge_and_unknown_schemes() {
        assert_eq!(
            parse_challenge([r#"Basic realm="Registry Realm""#]),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge([r#"Negotiate"#]), None);
        assert_eq!(
            parse_challenge([r#"Basic realm="x", Bearer realm="https://t",service=s"#]),
            Some(Challenge::Bearer {
                realm: "https://t".into(),
                service: Some("s".into())
            })
        );
    }
}
