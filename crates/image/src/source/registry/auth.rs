//! Pure parsers for registry authentication: docker's `config.json`
//! (`auths` by host) and `WWW-Authenticate` challenges.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

/// What strata presents to a registry (or its token server).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`), exchanged at
    /// the token realm with `grant_type=refresh_token`.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct DockerConfig {
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The inline credentials of a docker `config.json`. Credential helpers
/// (`credsStore`, `credHelpers`) are not run.
#[derive(Debug, Default)]
pub(crate) struct AuthFile {
    /// (key as written, credential), in key order.
    entries: Vec<(String, Credential)>,
}

/// Docker Hub's names; credentials saved for one serve them all.
const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

impl AuthFile {
    pub fn parse(bytes: &[u8]) -> Result<AuthFile, String> {
        let config: DockerConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        for (key, entry) in config.auths {
            let nonempty = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
            // containerd's order: an identity token, then a user name,
            // then the `auth` pair.
            let credential = if let Some(token) = nonempty(&entry.identitytoken) {
                Credential::IdentityToken(token)
            } else if let Some(username) = nonempty(&entry.username) {
                Credential::Basic {
                    username,
                    password: entry.password.unwrap_or_default(),
                }
            } else if let Some(auth) = nonempty(&entry.auth) {
                decode_auth(&auth).ok_or_else(|| format!("auths[{key:?}].auth is not base64 of USER:PASSWORD"))?
            } else {
                // `{}`: kept in a credential store strata does not read.
                continue;
            };
            entries.push((key, credential));
        }
        Ok(AuthFile { entries })
    }

    /// The credential for `host` (`host[:port]`): a key that is exactly
    /// the host first, then keys naming it with a scheme or path
    /// (`https://host`, `host/v1/`), as docker matches them.
    pub fn lookup(&self, host: &str) -> Option<&Credential> {
        let names: Vec<&str> = if DOCKER_HUB.contains(&host) {
            DOCKER_HUB.to_vec()
        } else {
            vec![host]
        };
        let exact = self.entries.iter().find(|(key, _)| key == host);
        exact
            .or_else(|| self.entries.iter().find(|(key, _)| names.contains(&key_host(key))))
            .map(|(_, c)| c)
    }
}

/// `https://host:5000/v1/` -> `host:5000`.
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

fn decode_auth(auth: &str) -> Option<Credential> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(auth.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credential::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

pub(crate) fn basic_header(username: &str, password: &str) -> String {
    let pair = format!("{username}:{password}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lower case: `basic`, `bearer`.
    pub scheme: String,
    /// Parameter names in lower case, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Parses a `WWW-Authenticate` value (RFC 7235): challenges separated by
/// commas, each a scheme and `name=value` or `name="quoted"` parameters.
/// What does not parse is skipped; this never fails.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let chars: Vec<char> = header.chars().collect();
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    while i < chars.len() {
        skip_ws(&mut i);
        if i < chars.len() && chars[i] == ',' {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_tchar(chars[i]) {
            i += 1;
        }
        if i == start {
            // Not a token: skip the character, keep going.
            i += 1;
            continue;
        }
        let token: String = chars[start..i].iter().collect();
        let mut j = i;
        skip_ws(&mut j);
        if j < chars.len() && chars[j] == '=' {
            // A parameter of the current challenge (or token68 padding).
            i = j + 1;
            skip_ws(&mut i);
            let value = if i < chars.len() && chars[i] == '"' {
                i += 1;
                let mut value = String::new();
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    value.push(chars[i]);
                    i += 1;
                }
                i += 1; // the closing quote, if any
                value
            } else {
                let start = i;
                while i < chars.len() && is_tchar(chars[i]) {
                    i += 1;
                }
                chars[start..i].iter().collect()
            };
            if let Some(challenge) = out.last_mut() {
                challenge.params.push((token.to_ascii_lowercase(), value));
            }
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn auth_file_forms() {
        let file = AuthFile::parse(
            br#"{
              "auths": {
                "r1.example": {"auth": "dXNlcjpwYTpzcw=="},
                "r2.example:5000": {"username": "bob", "password": "pw", "auth": "eDp5"},
                "https://r3.example/v1/": {"auth": "eDp5", "identitytoken": "refresh-me"},
                "http://r4.example:8080": {"auth": "eDp5"},
                "https://index.docker.io/v1/": {"auth": "aHViOnB3"},
                "r5.example": {},
                "r6.example": {"auth": ""}
              },
              "credsStore": "desktop",
              "HttpHeaders": {"User-Agent": "x"}
            }"#,
        )
        .unwrap();
        assert_eq!(file.lookup("r1.example"), Some(&basic("user", "pa:ss")));
        assert_eq!(file.lookup("r2.example:5000"), Some(&basic("bob", "pw")));
        assert_eq!(file.lookup("r2.example"), None);
        assert_eq!(
            file.lookup("r3.example"),
            Some(&Credential::IdentityToken("refresh-me".into()))
        );
        assert_eq!(file.lookup("r4.example:8080"), Some(&basic("x", "y")));
        for hub in DOCKER_HUB {
            assert_eq!(file.lookup(hub), Some(&basic("hub", "pw")), "{hub}");
        }
        assert_eq!(file.lookup("r5.example"), None);
        assert_eq!(file.lookup("r6.example"), None);
        assert_eq!(file.lookup("elsewhere.example"), None);
    }

    #[test]
    fn an_exact_key_wins_over_a_url_key() {
        let file =
            AuthFile::parse(br#"{"auths": {"https://r.example": {"auth": "YTpi"}, "r.example": {"auth": "Yzpk"}}}"#)
                .unwrap();
        assert_eq!(file.lookup("r.example"), Some(&basic("c", "d")));
    }

    #[test]
    fn broken_auth_files_are_refused() {
        for (text, needle) in [
            (
                &br#"{"auths": {"r": {"auth": "not base64!"}}}"#[..],
                "auths[\"r\"].auth",
            ),
            (br#"{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}"#, "USER:PASSWORD"),
            (br#"{"auths": {"r": {"auth": "/w=="}}}"#, "USER:PASSWORD"),
            (br#"{"auths": []}"#, ""),
            (br#"{"auths": {"r": {"auth": 5}}}"#, ""),
            (b"\xff\xfe", ""),
            (b"", ""),
        ] {
            let e = AuthFile::parse(text).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        assert!(AuthFile::parse(b"{}").unwrap().lookup("r").is_none());
    }

    #[test]
    fn credentials_do_not_show_in_debug_output() {
        let text = format!(
            "{:?} {:?}",
            basic("u", "secret"),
            Credential::IdentityToken("tok".into())
        );
        assert!(!text.contains("secret") && !text.contains("tok"), "{text}");
    }

    #[test]
    fn basic_header_is_base64() {
        assert_eq!(basic_header("user", "pa:ss"), "Basic dXNlcjpwYTpzcw==");
    }

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example/token"));
        assert_eq!(c[0].param("service"), Some("registry.example"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));

        let c = parse_challenges(r#"Basic realm="x \"y\"", charset=UTF-8, Bearer realm=tok , error="invalid_token""#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(
            c[0].params,
            [("realm".into(), "x \"y\"".into()), ("charset".into(), "UTF-8".into())]
        );
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("tok"));
        assert_eq!(c[1].param("error"), Some("invalid_token"));

        assert_eq!(parse_challenges("Negotiate abc123==")[0].scheme, "negotiate");
        assert_eq!(parse_challenges("BASIC REALM=\"r\"")[0].param("realm"), Some("r"));
    }

    #[test]
    fn garbage_challenges_never_panic() {
        for text in [
            "",
            ",,,",
            "=",
            "realm=\"x\"",
            "Bearer realm=\"unterminated",
            "Bearer realm=\"ends in backslash\\",
            "Bearer realm=",
            "Bearer ===",
            "\u{0}\u{7f}é\"\\",
            "Bearer realm=\"a\"\"b\",,, ,scope",
        ] {
            let _ = parse_challenges(text);
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet: Vec<char> = "Bearer Basic realm=\"\\,; \t=é\u{0}".chars().collect();
        for len in 0..500 {
            let text: String = (0..len % 61)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[usize::try_from(seed % 64).unwrap_or(0) % alphabet.len()]
                })
                .collect();
            let _ = parse_challenges(&text);
        }
        assert!(parse_challenges("realm=\"x\"").is_empty());
    }
}
