//! What the generator sends and where: URLs, their resolved endpoints, and
//! the request kinds of a run (one per URL, or the weighted kinds of a
//! `--mix` file), each built once into the exact bytes that go on the wire.
//!
//! A mix file is TOML, one `[[request]]` table per kind, like a wrk2 Lua
//! mix without the Lua:
//!
//! ```toml
//! [[request]]
//! name = "echo"                 # optional; defaults to "METHOD PATH"
//! weight = 3                    # optional; default 1
//! path = "/function/echo"       # on the command line's URL; or url = "http://host:port/path"
//! method = "POST"               # optional; default --method
//! body = "hello"                # or body_file = "payload.bin" (relative to the mix file)
//! headers = { "Content-Type" = "text/plain" }
//! ```
//!
//! Host names are resolved once, before the run, on a helper thread with a
//! deadline: a resolver that hangs is an error, not a hung benchmark.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Largest request (head and body) a kind may be.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Why a URL was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Only `http://` is spoken.
    #[error("unsupported URL {0:?}: only http:// is supported (no TLS)")]
    UnsupportedScheme(String),
    /// The URL does not parse.
    #[error("bad URL {url:?}: {why}")]
    Malformed {
        /// The URL.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Why a host could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The resolver failed (unknown host, no network…).
    #[error("cannot resolve host {host:?}: {source}")]
    Failed {
        /// The host name.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The resolver answered with no address.
    #[error("host {0:?} has no address")]
    NoAddress(String),
    /// The resolver did not answer in time.
    #[error("resolving host {host:?} took longer than {timeout:?}")]
    TimedOut {
        /// The host name.
        host: String,
        /// How long it was given.
        timeout: Duration,
    },
}

/// Why a request could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The method is not an HTTP token.
    #[error("bad method {0:?}: expected an HTTP method such as GET or POST")]
    BadMethod(String),
    /// A standard method in the wrong case: methods are case-sensitive,
    /// and a server would not take `head` for `HEAD`.
    #[error("method {0:?}: methods are case-sensitive; did you mean {1}?")]
    MethodCase(String, String),
    /// A header is not `Name: value` or carries line breaks.
    #[error("bad header {0:?}: expected \"Name: value\" on one line")]
    BadHeader(String),
    /// A header the generator sets itself (framing must match the body).
    #[error("header {0:?} is set by the load generator from the body; leave it out")]
    ReservedHeader(String),
    /// The request is larger than [`MAX_REQUEST_BYTES`].
    #[error("request of {0} bytes is larger than the generator's {MAX_REQUEST_BYTES}")]
    TooLarge(usize),
}

/// Why a mix file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MixError {
    /// The file (or a body file it names) could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not TOML of the expected shape.
    #[error("mix file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, from the TOML parser.
        message: String,
    },
    /// An entry is inconsistent.
    #[error("mix file {path}, request {index}: {why}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// 1-based position of the `[[request]]` table.
        index: usize,
        /// What is wrong.
        why: String,
    },
}

/// A parsed `http://host[:port][/path][?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80 when the URL names none).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Url {
    /// Parses an `http://` URL.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let malformed = |why| UrlError::Malformed {
            url: text.to_owned(),
            why,
        };
        let t = text.trim();
        let Some((scheme, rest)) = t.split_once("://") else {
            return Err(malformed("expected http://HOST[:PORT]/PATH"));
        };
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(UrlError::UnsupportedScheme(text.to_owned()));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        if path.contains('#') {
            return Err(malformed("fragments (#) are not sent to servers"));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(malformed("spaces or control characters in the path"));
        }
        if authority.contains('@') {
            return Err(malformed("user information is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| malformed("unclosed [ in the host"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| malformed("junk after ]"))?,
                ),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(malformed("no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| malformed("the port is not a number in 1..=65535"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// The `Host` header's value: the host, and the port unless it is 80.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Resolves `host:port` to its first address, giving up after `timeout`.
pub fn resolve(host: &str, port: u16, timeout: Duration) -> Result<SocketAddr, ResolveError> {
    // Literal addresses need no resolver (and no thread).
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let (tx, rx) = mpsc::channel();
    let name = host.to_owned();
    // The thread is detached: if the resolver hangs, it alone stays behind.
    std::thread::Builder::new()
        .name("load-resolve".into())
        .spawn(move || {
            let _ = tx.send(
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(|a| a.collect::<Vec<_>>()),
            );
        })
        .map_err(|source| ResolveError::Failed {
            host: host.to_owned(),
            source,
        })?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(addrs)) => {
            // Prefer IPv4: "localhost" servers usually listen on 127.0.0.1.
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| addrs.first())
                .copied()
                .ok_or_else(|| ResolveError::NoAddress(host.to_owned()))
        }
        Ok(Err(source)) => Err(ResolveError::Failed {
            host: host.to_owned(),
            source,
        }),
        Err(_) => Err(ResolveError::TimedOut {
            host: host.to_owned(),
            timeout,
        }),
    }
}

/// A server the generator keeps connections to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host as written in the URL.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The resolved address connections go to.
    pub addr: SocketAddr,
}

/// One kind of request of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKind {
    /// Name in reports (`POST /function/echo` unless the mix names it).
    pub name: String,
    /// Index into the run's endpoints.
    pub endpoint: usize,
    /// Relative weight in the mix.
    pub weight: u32,
    /// The request's wire bytes, built once.
    pub wire: Vec<u8>,
    /// Whether the response carries a body (false for `HEAD`).
    pub response_has_body: bool,
}

/// A request before it is built: what the command line or a mix entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    /// Name in reports, if given.
    pub name: Option<String>,
    /// Where it goes.
    pub url: Url,
    /// HTTP method.
    pub method: String,
    /// Extra headers (`Name: value`).
    pub headers: Vec<String>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Relative weight.
    pub weight: u32,
}

/// The request kinds of a run and the endpoints they go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// Distinct servers, in order of first use.
    pub endpoints: Vec<Endpoint>,
    /// Request kinds.
    pub kinds: Vec<RequestKind>,
}

/// Why the targets of a run could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A host did not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// A request could not be built.
    #[error("request {name:?}: {source}")]
    Request {
        /// The kind's name.
        name: String,
        /// The cause.
        source: RequestError,
    },
    /// No request kind at all (or every weight is 0).
    #[error("nothing to send: give a URL, or a mix with a positive weight")]
    Empty,
}

impl Targets {
    /// Resolves every distinct host once and builds every kind's bytes.
    pub fn build(specs: &[RequestSpec], resolve_timeout: Duration) -> Result<Self, TargetError> {
        if specs.iter().all(|s| s.weight == 0) {
            return Err(TargetError::Empty);
        }
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut kinds = Vec::with_capacity(specs.len());
        // Default names are `METHOD PATH`; where two kinds would share one
        // (the same path on two servers), `METHOD HOST:PORT PATH`.
        let short = |spec: &RequestSpec| format!("{} {}", spec.method, spec.url.path);
        let shared = |spec: &RequestSpec| {
            specs
                .iter()
                .filter(|o| o.name.is_none() && short(o) == short(spec))
                .count()
                > 1
        };
        for spec in specs {
            let endpoint = match endpoints
                .iter()
                .position(|e| e.host == spec.url.host && e.port == spec.url.port)
            {
                Some(i) => i,
                None => {
                    let addr = resolve(&spec.url.host, spec.url.port, resolve_timeout)?;
                    endpoints.push(Endpoint {
                        host: spec.url.host.clone(),
                        port: spec.url.port,
                        addr,
                    });
                    endpoints.len() - 1
                }
            };
            let name = spec.name.clone().unwrap_or_else(|| {
                if shared(spec) {
                    format!(
                        "{} {}:{}{}",
                        spec.method, spec.url.host, spec.url.port, spec.url.path
                    )
                } else {
                    short(spec)
                }
            });
            let wire = build_request(
                &spec.method,
                &spec.url.host_header(),
                &spec.url.path,
                &spec.headers,
                &spec.body,
            )
            .map_err(|source| TargetError::Request {
                name: name.clone(),
                source,
            })?;
            kinds.push(RequestKind {
                name,
                endpoint,
                weight: spec.weight,
                wire,
                response_has_body: !spec.method.eq_ignore_ascii_case("HEAD"),
            });
        }
        Ok(Self { endpoints, kinds })
    }

    /// The kinds' weights, in order.
    pub fn weights(&self) -> Vec<u32> {
        self.kinds.iter().map(|k| k.weight).collect()
    }
}

/// Builds a request's bytes: request line, `Host` (unless given),
/// `Content-Length` (for a body, or any method but GET/HEAD), the extra
/// headers and the body.
pub fn build_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[String],
    body: &[u8],
) -> Result<Vec<u8>, RequestError> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(RequestError::BadMethod(method.to_owned()));
    }
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if let Some(standard) = STANDARD
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method) && **m != method)
    {
        return Err(RequestError::MethodCase(
            method.to_owned(),
            (*standard).to_owned(),
        ));
    }
    let mut parsed = Vec::with_capacity(headers.len());
    for header in headers {
        let bad = || RequestError::BadHeader(header.clone());
        let (name, value) = header.split_once(':').ok_or_else(bad)?;
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(bad());
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(bad());
        }
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return Err(RequestError::ReservedHeader(name.to_owned()));
        }
        parsed.push((name, value));
    }
    let mut out = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    if !parsed.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    let bodiless_method = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
    if !body.is_empty() || !bodiless_method {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for (name, value) in parsed {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if out.len() + body.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge(out.len() + body.len()));
    }
    out.extend_from_slice(body);
    Ok(out)
}

/// One `[[request]]` table of a mix file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MixEntry {
    name: Option<String>,
    weight: Option<u32>,
    path: Option<String>,
    url: Option<String>,
    method: Option<String>,
    body: Option<String>,
    body_file: Option<PathBuf>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MixFile {
    #[serde(default)]
    request: Vec<MixEntry>,
}

/// Reads a mix file into request specs. `base` (the command line's URL)
/// supplies host and port to entries that give a `path`; `method` and
/// `headers` are the defaults of the command line.
pub fn read_mix(
    path: &Path,
    base: Option<&Url>,
    method: &str,
    headers: &[String],
) -> Result<Vec<RequestSpec>, MixError> {
    let text = std::fs::read_to_string(path).map_err(|source| MixError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: MixFile = toml::from_str(&text).map_err(|e| MixError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })?;
    if file.request.is_empty() {
        return Err(MixError::Parse {
            path: path.to_owned(),
            message: "no [[request]] tables".into(),
        });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut specs = Vec::with_capacity(file.request.len());
    for (i, entry) in file.request.into_iter().enumerate() {
        let entry_err = |why: String| MixError::Entry {
            path: path.to_owned(),
            index: i + 1,
            why,
        };
        let url = match (&entry.url, &entry.path) {
            (Some(u), None) => Url::parse(u).map_err(|e| entry_err(e.to_string()))?,
            (None, Some(p)) => {
                let base = base.ok_or_else(|| {
                    entry_err(
                        "`path` needs a URL on the command line for host and port (or give `url`)"
                            .into(),
                    )
                })?;
                if !p.starts_with('/') {
                    return Err(entry_err(format!("path {p:?} must start with /")));
                }
                Url {
                    path: p.clone(),
                    ..base.clone()
                }
            }
            _ => return Err(entry_err("give exactly one of `path` and `url`".into())),
        };
        if let Some(name) = &entry.name {
            if let Some(first) = specs
                .iter()
                .position(|s: &RequestSpec| s.name.as_ref() == Some(name))
            {
                return Err(entry_err(format!(
                    "name {name:?} is taken by request {}: give each request its own name",
                    first + 1
                )));
            }
        }
        let body = match (entry.body, entry.body_file) {
            (Some(b), None) => b.into_bytes(),
            (None, Some(f)) => {
                let file = dir.join(&f);
                // The resolved path: a relative one is relative to the mix
                // file, not to where the command runs.
                let shown = std::path::absolute(&file).unwrap_or_else(|_| file.clone());
                std::fs::read(&file).map_err(|e| {
                    entry_err(format!(
                        "cannot read body_file {:?} ({}): {e}",
                        f.display().to_string(),
                        shown.display()
                    ))
                })?
            }
            (None, None) => Vec::new(),
            (Some(_), Some(_)) => {
                return Err(entry_err(
                    "give at most one of `body` and `body_file`".into(),
                ))
            }
        };
        let mut all_headers = headers.to_vec();
        all_headers.extend(entry.headers.iter().map(|(k, v)| format!("{k}: {v}")));
        specs.push(RequestSpec {
            name: entry.name,
            url,
            method: entry.method.unwrap_or_else(|| method.to_owned()),
            headers: all_headers,
            body,
            weight: entry.weight.unwrap_or(1),
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8080/function/echo").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/function/echo")
        );
        assert_eq!(u.host_header(), "127.0.0.1:8080");
        let u = Url::parse("http://example.com").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert_eq!(u.host_header(), "example.com");
        let u = Url::parse("HTTP://h?x=1").unwrap();
        assert_eq!(u.path, "/?x=1");
        let u = Url::parse("http://[::1]:9000/a?b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/a?b")
        );
        assert_eq!(u.host_header(), "[::1]:9000");
        assert!(matches!(
            Url::parse("https://h/"),
            Err(UrlError::UnsupportedScheme(_))
        ));
        for bad in [
            "h:80/x",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://h:x/",
            "http://[::1/",
            "http://[::1]x/",
            "http://u@h/",
            "http://h/a b",
            "http://h/#frag",
        ] {
            assert!(
                matches!(Url::parse(bad), Err(UrlError::Malformed { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn request_bytes() {
        let r = build_request("POST", "h:1", "/f", &["X-A: b".into()], b"hi").unwrap();
        assert_eq!(
            r,
            b"POST /f HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi"
        );
        let r = build_request("GET", "h", "/", &[], b"").unwrap();
        assert_eq!(r, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let r = build_request("POST", "h", "/", &["host: v".into()], b"").unwrap();
        assert_eq!(
            r,
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\nhost: v\r\n\r\n"
        );
        assert_eq!(
            build_request("PO ST", "h", "/", &[], b""),
            Err(RequestError::BadMethod("PO ST".into()))
        );
        assert!(matches!(
            build_request("GET", "h", "/", &["nocolon".into()], b""),
            Err(RequestError::BadHeader(_))
        ));
        assert!(matches!(
            build_request("GET", "h", "/", &["A: b\r\nC: d".into()], b""),
            Err(RequestError::BadHeader(_))
        ));
        assert!(matches!(
            build_request("GET", "h", "/", &["Content-Length: 5".into()], b""),
            Err(RequestError::ReservedHeader(_))
        ));
    }

    #[test]
    fn literal_addresses_resolve_without_a_resolver() {
        let a = resolve("127.0.0.1", 9, Duration::from_secs(1)).unwrap();
        assert_eq!(a, "127.0.0.1:9".parse().unwrap());
        let a = resolve("::1", 9, Duration::from_secs(1)).unwrap();
        assert_eq!(a, "[::1]:9".parse().unwrap());
        assert!(resolve("localhost", 9, Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn mix_files() {
        let dir = std::env::temp_dir().join(format!("nocturne-load-mix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("payload.bin"), b"\x00\x01binary").unwrap();
        let mix = dir.join("mix.toml");
        std::fs::write(
            &mix,
            r#"
            [[request]]
            path = "/function/echo"
            weight = 3
            body = "hello"
            [[request]]
            name = "foo"
            url = "http://127.0.0.1:9/function/foo"
            method = "PUT"
            body_file = "payload.bin"
            headers = { "X-Trace" = "1" }
            "#,
        )
        .unwrap();
        let base = Url::parse("http://127.0.0.1:8080/").unwrap();
        let specs = read_mix(&mix, Some(&base), "POST", &["X-Common: y".into()]).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].url.port, 8080);
        assert_eq!(specs[0].url.path, "/function/echo");
        assert_eq!((specs[0].weight, specs[0].method.as_str()), (3, "POST"));
        assert_eq!(specs[0].body, b"hello");
        assert_eq!(specs[1].name.as_deref(), Some("foo"));
        assert_eq!(specs[1].body, b"\x00\x01binary");
        assert_eq!(specs[1].headers, vec!["X-Common: y", "X-Trace: 1"]);
        let targets = Targets::build(&specs, Duration::from_secs(1)).unwrap();
        assert_eq!(targets.endpoints.len(), 2);
        assert_eq!(targets.kinds[0].name, "POST /function/echo");
        assert_eq!(targets.kinds[1].endpoint, 1);
        assert_eq!(targets.weights(), vec![3, 1]);

        let bad = |toml: &str| {
            std::fs::write(&mix, toml).unwrap();
            read_mix(&mix, None, "POST", &[]).unwrap_err().to_string()
        };
        assert!(bad("[[request]]\npath = \"/x\"").contains("needs a URL"));
        assert!(bad("[[request]]\nurl = \"http://h/\"\npath = \"/x\"").contains("exactly one"));
        assert!(bad("[[request]]\nurl = \"http://h/\"\nbogus = 1").contains("bogus"));
        assert!(bad("").contains("no [[request]]"));
        assert!(bad("[[request]]\nurl = \"ftp://h/\"").contains("only http"));
        assert!(
            bad("[[request]]\nurl = \"http://h/\"\nbody_file = \"nope\"").contains("cannot read")
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            read_mix(&mix, None, "POST", &[]),
            Err(MixError::Read { .. })
        ));
    }
}
