//! Outbound URLs: a validated base URL (given by a user or an operator) joined with a path
//! (given by a plugin) that cannot change where the request goes.
//!
//! The join is structural, never textual: the path replaces nothing but the path and query of
//! the base, so the scheme, host and port (the origin) always stay the base's. The path is
//! validated first anyway, so that a plugin asking for something else is told which rule it
//! broke instead of being silently rewritten, and so that a server that decodes paths once
//! more (`%2e%2e`, `%2f`) cannot be walked out of the base's path prefix either.

use std::fmt;

use reqwest::Url;

/// Longest accepted path (with its query), in bytes.
pub const MAX_PATH_BYTES: usize = 2048;
/// How many times a segment is percent-decoded when looking for hidden separators and dot
/// segments (`%252e` is `%2e` once decoded, `.` twice).
const DECODE_ROUNDS: usize = 3;

/// An http(s) URL with a host and no userinfo, query or fragment: the root that outbound
/// paths are joined to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl(Url);

/// Why a base URL is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseUrlError {
    NotAUrl(String),
    NotHttp,
    HasCredentialsOrQuery,
}

impl fmt::Display for BaseUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaseUrlError::NotAUrl(err) => write!(f, "is not a URL: {err}"),
            BaseUrlError::NotHttp => f.write_str("must be an http(s) URL with a host"),
            BaseUrlError::HasCredentialsOrQuery => f.write_str(
                "must carry no query, fragment or credentials; pass the key as `api_key`",
            ),
        }
    }
}

impl BaseUrl {
    pub fn parse(text: &str) -> Result<Self, BaseUrlError> {
        let url = Url::parse(text.trim()).map_err(|err| BaseUrlError::NotAUrl(err.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(BaseUrlError::NotHttp);
        }
        if url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(BaseUrlError::HasCredentialsOrQuery);
        }
        Ok(Self(url))
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    /// `base` + `path`, after [`check_path`]. The result always has the base's origin and
    /// starts with the base's path.
    pub fn join(&self, path: &str) -> Result<Url, PathRule> {
        check_path(path)?;
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let mut url = self.0.clone();
        let joined = format!("{}{path}", self.0.path().trim_end_matches('/'));
        url.set_path(&joined);
        url.set_query(query);
        Ok(url)
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether two URLs have the same origin (scheme, host and port).
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.origin() == b.origin()
}

/// The rule a path breaks. Its text names the rule, for the error a plugin author reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRule {
    MustStartWithSlash,
    NoAuthority,
    NoScheme,
    NoUserinfo,
    NoBackslash,
    NoFragment,
    NoDotSegments,
    NoEncodedSeparator,
    NoControlCharacters,
    NoWhitespace,
    AsciiOnly,
    MalformedPercentEncoding,
    TooLong,
}

impl fmt::Display for PathRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathRule::MustStartWithSlash => "a path must start with `/`",
            PathRule::NoAuthority => "a path must not start with `//` (that names another host)",
            PathRule::NoScheme => "a path must not carry a scheme (`http:`, ...)",
            PathRule::NoUserinfo => "a path must not contain `@` (encode it as %40)",
            PathRule::NoBackslash => "a path must not contain a backslash",
            PathRule::NoFragment => "a path must not contain `#`",
            PathRule::NoDotSegments => {
                "a path must not contain `.` or `..` segments, also percent-encoded"
            }
            PathRule::NoEncodedSeparator => {
                "a path must not contain an encoded `/` or `\\` (%2f, %5c)"
            }
            PathRule::NoControlCharacters => {
                "a path must not contain control characters, also percent-encoded"
            }
            PathRule::NoWhitespace => "a path must not contain whitespace",
            PathRule::AsciiOnly => "a path must be ASCII (percent-encode anything else)",
            PathRule::MalformedPercentEncoding => "a path has a `%` not followed by two hex digits",
            PathRule::TooLong => "a path must not be longer than 2048 bytes",
        })
    }
}

/// Checks a path (with an optional `?query`) that is to be joined to a base URL.
pub fn check_path(path: &str) -> Result<(), PathRule> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathRule::TooLong);
    }
    if has_scheme(path) {
        return Err(PathRule::NoScheme);
    }
    if !path.starts_with('/') {
        return Err(PathRule::MustStartWithSlash);
    }
    if path.starts_with("//") {
        return Err(PathRule::NoAuthority);
    }
    for c in path.chars() {
        let rule = match c {
            '@' => PathRule::NoUserinfo,
            '\\' => PathRule::NoBackslash,
            '#' => PathRule::NoFragment,
            c if c.is_control() => PathRule::NoControlCharacters,
            c if c.is_whitespace() => PathRule::NoWhitespace,
            c if !c.is_ascii() => PathRule::AsciiOnly,
            _ => continue,
        };
        return Err(rule);
    }
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    // The query cannot move the request, but an encoded control character in it is no more
    // welcome than a raw one.
    check_decoded(query, false)?;
    for segment in path.split('/').skip(1) {
        check_decoded(segment, true)?;
    }
    Ok(())
}

/// `http:`, `https:`, `javascript:`, ...: letters, digits, `+-.` and then `:` before any `/`.
fn has_scheme(path: &str) -> bool {
    let Some((scheme, _)) = path.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Percent-decodes `part` a few times and checks every round: no control character, and for a
/// path segment no separator and no dot segment.
fn check_decoded(part: &str, segment: bool) -> Result<(), PathRule> {
    let mut current = part.as_bytes().to_vec();
    for round in 0..=DECODE_ROUNDS {
        // `..;x` is `..` to servers that cut path parameters (Tomcat, Jetty).
        let before_parameters = current.split(|&b| b == b';').next().unwrap_or_default();
        if segment && (before_parameters == b"." || before_parameters == b"..") {
            return Err(PathRule::NoDotSegments);
        }
        if round > 0 {
            if segment && current.iter().any(|b| matches!(b, b'/' | b'\\')) {
                return Err(PathRule::NoEncodedSeparator);
            }
            if current.iter().any(|b| b.is_ascii_control()) {
                return Err(PathRule::NoControlCharacters);
            }
        }
        match percent_decode(&current) {
            // The first round must be well-formed; later rounds may meet a literal `%`.
            Err(()) if round == 0 => return Err(PathRule::MalformedPercentEncoding),
            Err(()) => return Ok(()),
            Ok(None) => return Ok(()),
            Ok(Some(decoded)) => current = decoded,
        }
    }
    Ok(())
}

/// `Ok(None)` when there is nothing to decode, `Err` on a `%` without two hex digits.
fn percent_decode(bytes: &[u8]) -> Result<Option<Vec<u8>>, ()> {
    if !bytes.contains(&b'%') {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(())?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(());
            }
            let text = std::str::from_utf8(hex).map_err(|_| ())?;
            out.push(u8::from_str_radix(text, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_against_each_rule() {
        use PathRule::*;
        let table: &[(&str, Result<(), PathRule>)] = &[
            ("/v1/models", Ok(())),
            ("/v1/chat/completions", Ok(())),
            ("/", Ok(())),
            ("/models?api-version=2024-06-01", Ok(())),
            ("/v1/models/moonshotai%2FKimi", Err(NoEncodedSeparator)),
            ("/ai/run/%40cf/meta/llama-3", Ok(())),
            ("/files/100%25", Ok(())),
            ("/a.b/..c/c..", Ok(())),
            ("/v1//models", Ok(())),
            ("", Err(MustStartWithSlash)),
            ("v1/models", Err(MustStartWithSlash)),
            (":8081/x", Err(MustStartWithSlash)),
            ("@127.0.0.1:8081/v1/models", Err(MustStartWithSlash)),
            ("/@127.0.0.1:8081/v1/models", Err(NoUserinfo)),
            ("/v1/models?x=a@b", Err(NoUserinfo)),
            ("//127.0.0.1:8081/x", Err(NoAuthority)),
            ("http://127.0.0.1:8081/x", Err(NoScheme)),
            ("https:/x", Err(NoScheme)),
            ("javascript:alert(1)", Err(NoScheme)),
            ("\\\\127.0.0.1:8081\\x", Err(MustStartWithSlash)),
            ("/\\127.0.0.1:8081/x", Err(NoBackslash)),
            ("/v1\\..\\x", Err(NoBackslash)),
            ("/x#frag", Err(NoFragment)),
            ("/../x", Err(NoDotSegments)),
            ("/..;/admin", Err(NoDotSegments)),
            ("/v1/.%2e;jsessionid=x/y", Err(NoDotSegments)),
            ("/v1/..", Err(NoDotSegments)),
            ("/./x", Err(NoDotSegments)),
            ("/%2e%2e/x", Err(NoDotSegments)),
            ("/%2E%2E/x", Err(NoDotSegments)),
            ("/.%2e/x", Err(NoDotSegments)),
            ("/%2e/x", Err(NoDotSegments)),
            ("/%252e%252e/x", Err(NoDotSegments)),
            ("/%25252e%25252e/x", Err(NoDotSegments)),
            ("/%2f%2f127.0.0.1:8081/x", Err(NoEncodedSeparator)),
            ("/%2F127.0.0.1/x", Err(NoEncodedSeparator)),
            ("/%5c127.0.0.1/x", Err(NoEncodedSeparator)),
            ("/%5C/x", Err(NoEncodedSeparator)),
            ("/%252f/x", Err(NoEncodedSeparator)),
            ("/x\n/y", Err(NoControlCharacters)),
            ("/x\r\nHost: evil", Err(NoControlCharacters)),
            ("/x\0", Err(NoControlCharacters)),
            ("/x\u{7f}", Err(NoControlCharacters)),
            ("/x%0d%0aHost:%20evil", Err(NoControlCharacters)),
            ("/x?q=%00", Err(NoControlCharacters)),
            ("/v1/ models", Err(NoWhitespace)),
            ("/v1/\u{a0}models", Err(NoWhitespace)),
            ("/v1/\u{2028}", Err(NoWhitespace)),
            ("/v1/mod\u{e8}les", Err(AsciiOnly)),
            ("/\u{ff0f}\u{ff0f}evil", Err(AsciiOnly)),
            ("/x%", Err(MalformedPercentEncoding)),
            ("/x%zz", Err(MalformedPercentEncoding)),
            ("/x%2", Err(MalformedPercentEncoding)),
            ("/x%+1", Err(MalformedPercentEncoding)),
        ];
        for (path, expected) in table {
            assert_eq!(check_path(path), *expected, "{path:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(check_path(&long), Err(TooLong));
    }

    #[test]
    fn joins_keep_the_origin_and_the_base_path() {
        let base = BaseUrl::parse("http://127.0.0.1:3000/tenant/v1/").unwrap();
        let url = base.join("/models?limit=2").unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:3000/tenant/v1/models?limit=2"
        );
        assert!(same_origin(&url, base.as_url()));
        let bare = BaseUrl::parse("https://api.example.com").unwrap();
        assert_eq!(
            bare.join("/v1/models").unwrap().as_str(),
            "https://api.example.com/v1/models"
        );
        assert_eq!(
            base.join("@127.0.0.1:3001/v1/models"),
            Err(PathRule::MustStartWithSlash)
        );
    }

    #[test]
    fn base_urls_are_http_with_a_host_and_nothing_else() {
        for ok in [
            "http://127.0.0.1:3000",
            "https://api.moonshot.cn/v1",
            " http://relay:8080/prefix/ ",
            "http://[::1]:8080",
        ] {
            assert!(BaseUrl::parse(ok).is_ok(), "{ok}");
        }
        for (bad, expected) in [
            ("ftp://x", BaseUrlError::NotHttp),
            ("file:///etc/passwd", BaseUrlError::NotHttp),
            ("http://u:p@host/v1", BaseUrlError::HasCredentialsOrQuery),
            ("http://u@host/v1", BaseUrlError::HasCredentialsOrQuery),
            ("http://host/v1?key=x", BaseUrlError::HasCredentialsOrQuery),
            ("http://host/v1#x", BaseUrlError::HasCredentialsOrQuery),
        ] {
            assert_eq!(BaseUrl::parse(bad), Err(expected), "{bad}");
        }
        assert!(matches!(
            BaseUrl::parse("not a url"),
            Err(BaseUrlError::NotAUrl(_))
        ));
    }

    #[test]
    fn origins_differ_by_scheme_host_or_port() {
        let a = Url::parse("http://127.0.0.1:3000/a").unwrap();
        assert!(same_origin(
            &a,
            &Url::parse("http://127.0.0.1:3000/b?x").unwrap()
        ));
        for other in [
            "http://127.0.0.1:3001/a",
            "https://127.0.0.1:3000/a",
            "http://localhost:3000/a",
        ] {
            assert!(!same_origin(&a, &Url::parse(other).unwrap()), "{other}");
        }
    }
}
