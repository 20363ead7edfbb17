//! A small HTTP/1.1 client for the API tests (one request per connection), and the maskstream process
//! with its HTTP API up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

fn send(
    s: &mut TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
}

fn head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = connect(addr);
    send(&mut s, addr, method, path, headers, body);
    let mut r = BufReader::new(s);
    let (status, headers) = head(&mut r);
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Response {
        status,
        headers,
        body,
    }
}

pub fn get(addr: &str, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

/// The first `parts` JPEGs of a multipart/x-mixed-replace response (then the connection is closed).
pub fn mjpeg_parts(addr: &str, path: &str, parts: usize) -> (String, Vec<Vec<u8>>) {
    let mut s = connect(addr);
    send(&mut s, addr, "GET", path, &[], b"");
    let mut r = BufReader::new(s);
    let (status, headers) = head(&mut r);
    assert_eq!(status, 200);
    let ctype = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    // the body is chunked; collect raw bytes and pick JPEGs out by their Content-Length
    let mut raw = Vec::new();
    let mut jpegs = Vec::new();
    let t0 = Instant::now();
    while jpegs.len() < parts && t0.elapsed() < Duration::from_secs(60) {
        let mut size = String::new();
        if r.read_line(&mut size).unwrap() == 0 {
            break;
        }
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        let mut chunk = vec![0u8; n + 2];
        r.read_exact(&mut chunk).unwrap();
        raw.extend_from_slice(&chunk[..n]);
        jpegs = split_parts(&raw);
    }
    (ctype, jpegs)
}

fn split_parts(raw: &[u8]) -> Vec<Vec<u8>> {
    let text = raw;
    let mut out = Vec::new();
    let mut at = 0;
    let key = b"Content-Length: ";
    while let Some(p) = find(&text[at..], key) {
        let start = at + p + key.len();
        let Some(eol) = find(&text[start..], b"\r\n") else {
            break;
        };
        let n: usize = std::str::from_utf8(&text[start..start + eol])
            .unwrap()
            .parse()
            .unwrap();
        let body = start + eol + 4;
        if body + n > text.len() {
            break;
        }
        out.push(text[body..body + n].to_vec());
        at = body + n;
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `maskstream run ... --http 127.0.0.1:0` (or a pipeline file with `[http]`), its address read from
/// its "http: serving on" line; killed (SIGTERM, then SIGKILL) on drop.
pub struct Served {
    pub child: super::Reap,
    pub addr: String,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Served {
    pub fn start(mut cmd: std::process::Command) -> Served {
        cmd.stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("maskstream starts");
        let err = child.stderr.take().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("http: serving on http://") {
                    let _ = tx.send(a.trim_end_matches('/').to_string());
                }
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let child = super::Reap(child);
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no HTTP address; stderr:\n{}", stderr.lock().unwrap()));
        Served {
            child,
            addr,
            stderr,
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Polls `f` every 200 ms until it gives Some, for at most `limit`.
    pub fn wait_for<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let t0 = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                t0.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
