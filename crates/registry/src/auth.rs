//! `WWW-Authenticate` challenges and the token endpoint of Docker's token
//! authentication (GET with Basic credentials, or OAuth2 POST with a refresh token).

use std::collections::BTreeMap;

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
) -> Result<String, TokenError> {
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
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Empty {
            realm: realm.to_string(),
        })
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
