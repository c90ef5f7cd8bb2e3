//! One request to one host, authorized the way registries ask: anonymous
//! first; on 401, Basic with the host's credentials or a Bearer token from
//! the challenge's realm (GET with Basic credentials, or an OAuth2
//! `refresh_token` POST for an identity token). What worked is cached per
//! host, tokens per (host, scope) until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use serde::Deserialize;

use super::auth::{basic_header, parse_challenges, Challenge, Credential};
use super::hosts::Endpoint;
use super::http::{read_bounded, with_causes, BodyError};

/// Why a host did not serve a request.
#[derive(Debug)]
pub(crate) enum HostError {
    /// No answer: refused, reset, timed out, TLS failed.
    Network(String),
    /// An answer other than success; `detail` from the registry's error body.
    Status { status: u16, detail: String },
    /// No (accepted) credentials.
    Unauthorized(String),
}

#[derive(Clone)]
enum HostAuth {
    Basic,
    /// Tokens by scope, each with the instant it stops being used.
    Bearer(HashMap<String, (String, Instant)>),
}

/// What each host wanted, shared by every source of one config.
#[derive(Default)]
pub(crate) struct AuthCache {
    hosts: Mutex<HashMap<String, HostAuth>>,
}

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthCache")
    }
}

impl AuthCache {
    fn header(&self, host: &str, scope: &str, credential: Option<&Credential>) -> Option<String> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        match hosts.get(host)? {
            HostAuth::Basic => match credential {
                Some(Credential::Basic { username, password }) => Some(basic_header(username, password)),
                _ => None,
            },
            HostAuth::Bearer(tokens) => tokens
                .get(scope)
                .filter(|(_, until)| *until > Instant::now())
                .map(|(header, _)| header.clone()),
        }
    }

    fn set_basic(&self, host: &str) {
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_owned(), HostAuth::Basic);
    }

    fn set_token(&self, host: &str, scope: &str, header: &str, until: Instant) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let entry = hosts
            .entry(host.to_owned())
            .or_insert_with(|| HostAuth::Bearer(HashMap::new()));
        if let HostAuth::Basic = entry {
            *entry = HostAuth::Bearer(HashMap::new());
        }
        if let HostAuth::Bearer(tokens) = entry {
            tokens.retain(|_, (_, t)| *t > Instant::now());
            tokens.insert(scope.to_owned(), (header.to_owned(), until));
        }
    }
}

/// Who asks, and for what.
pub(crate) struct Requester<'a> {
    pub client: &'a reqwest::Client,
    pub endpoint: &'a Endpoint,
    pub credential: Option<&'a Credential>,
    pub cache: &'a AuthCache,
    /// `repository:NAME:pull`
    pub scope: &'a str,
}

/// Sends the request `build` makes (once more after a 401, with the
/// credentials the host asked for), with the host's headers added.
/// Returns any answer but 401; a second 401 is [`HostError::Unauthorized`].
pub(crate) async fn send_with(
    r: &Requester<'_>,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, HostError> {
    let host = r.endpoint.host.as_str();
    let mut auth = r.cache.header(host, r.scope, r.credential);
    for attempt in 0..2 {
        let mut request = build();
        for (name, value) in &r.endpoint.headers {
            request = request.header(name, value);
        }
        if let Some(header) = &auth {
            request = request.header(AUTHORIZATION, header);
        }
        let response = request
            .send()
            .await
            .map_err(|e| HostError::Network(with_causes(&e.without_url())))?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        if attempt == 1 {
            break;
        }
        let challenges: Vec<Challenge> = response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        auth = Some(authorize(r, &challenges).await?);
    }
    Err(HostError::Unauthorized(match r.credential {
        Some(_) => format!("the credentials for {host} were refused"),
        None => format!("anonymous access refused and no credentials for {host}"),
    }))
}

/// The Authorization header the challenges ask for; remembered for the host.
async fn authorize(r: &Requester<'_>, challenges: &[Challenge]) -> Result<String, HostError> {
    let host = r.endpoint.host.as_str();
    if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
        let realm = bearer
            .param("realm")
            .ok_or_else(|| HostError::Unauthorized(format!("{host} asks for a bearer token but names no realm")))?;
        let scope = bearer.param("scope").unwrap_or(r.scope);
        let (token, lifetime) = fetch_token(r, realm, bearer.param("service"), scope).await?;
        let header = format!("Bearer {token}");
        // Used until shortly before it expires.
        let until = Instant::now() + lifetime.saturating_sub(Duration::from_secs(5));
        r.cache.set_token(host, r.scope, &header, until);
        return Ok(header);
    }
    if challenges.iter().any(|c| c.scheme == "basic") {
        return match r.credential {
            Some(Credential::Basic { username, password }) => {
                r.cache.set_basic(host);
                Ok(basic_header(username, password))
            }
            Some(Credential::IdentityToken(_)) => Err(HostError::Unauthorized(format!(
                "{host} asks for basic auth, but its credential is an identity token"
            ))),
            None => Err(HostError::Unauthorized(format!("no credentials for {host}"))),
        };
    }
    Err(HostError::Unauthorized(format!(
        "{host} answered 401 without a Basic or Bearer challenge"
    )))
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The largest token response read.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// A token and how long it lives (60 s unless the server says).
async fn fetch_token(
    r: &Requester<'_>,
    realm: &str,
    service: Option<&str>,
    scope: &str,
) -> Result<(String, Duration), HostError> {
    let host = r.endpoint.host.as_str();
    let mut url = reqwest::Url::parse(realm)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| HostError::Unauthorized(format!("{host} names an invalid token realm {realm:?}")))?;
    let request = match r.credential {
        // containerd's OAuth2 exchange of an identity token.
        Some(Credential::IdentityToken(refresh)) => {
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
                ("client_id", "strata"),
                ("scope", scope),
            ];
            if let Some(service) = service {
                form.push(("service", service));
            }
            r.client.post(url).form(&form)
        }
        credential => {
            {
                let mut query = url.query_pairs_mut();
                if let Some(service) = service {
                    query.append_pair("service", service);
                }
                query.append_pair("scope", scope);
            }
            let request = r.client.get(url);
            match credential {
                Some(Credential::Basic { username, password }) => {
                    request.header(AUTHORIZATION, basic_header(username, password))
                }
                _ => request,
            }
        }
    };
    let response = request
        .send()
        .await
        .map_err(|e| HostError::Network(format!("token server {realm}: {}", with_causes(&e))))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(HostError::Unauthorized(match r.credential {
            Some(_) => format!("token server {realm} refused the credentials for {host} ({status})"),
            None => format!("token server {realm} refused anonymous access and there are no credentials for {host}"),
        }));
    }
    if !status.is_success() {
        return Err(HostError::Status {
            status: status.as_u16(),
            detail: format!("token server {realm}: {}", status_detail(response).await),
        });
    }
    let body = read_bounded(response, MAX_TOKEN_RESPONSE).await.map_err(|e| match e {
        BodyError::TooLarge(_) => HostError::Network(format!("token server {realm}: response over 1 MiB")),
        BodyError::Network(e) => HostError::Network(format!("token server {realm}: {e}")),
    })?;
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| HostError::Network(format!("token server {realm}: unreadable response: {e}")))?;
    let token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .or(parsed.token.filter(|t| !t.is_empty()))
        .ok_or_else(|| HostError::Network(format!("token server {realm}: no token in the response")))?;
    if reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
        return Err(HostError::Network(format!(
            "token server {realm}: the token is not a valid header value"
        )));
    }
    let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60).clamp(1, 24 * 3600));
    Ok((token, lifetime))
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A non-success answer as an error: its status and the registry's error
/// message (distribution's `{"errors": [{code, message}]}`) if it sent one.
pub(crate) async fn status_error(response: reqwest::Response) -> HostError {
    HostError::Status {
        status: response.status().as_u16(),
        detail: status_detail(response).await,
    }
}

async fn status_detail(response: reqwest::Response) -> String {
    let status = response.status();
    let body = read_bounded(response, 64 << 10).await.unwrap_or_default();
    let detail = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(ErrorBody { errors }) if !errors.is_empty() => errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::new(),
    };
    if detail.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {detail}")
    }
}
