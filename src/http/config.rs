//! `[http]` / `--http`: where the API listens and who may use it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `PORT` (on 127.0.0.1) or `ADDR:PORT`; absent: no HTTP API.
    pub listen: Option<String>,
    /// Bearer token from this environment variable, or from `token_file`.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Keep serving (and accepting streams) once every source has ended, until Ctrl-C.
    pub keep_running: bool,
    /// `/readyz` wants a frame from every running stream within this many seconds.
    pub ready_within_s: f64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            token_env: None,
            token_file: None,
            keep_running: true,
            ready_within_s: 10.0,
        }
    }
}

impl HttpConfig {
    /// The address to bind, when the API is on.
    pub fn address(&self) -> Result<Option<SocketAddr>> {
        let Some(l) = self.listen.as_deref() else {
            return Ok(None);
        };
        let bad = || {
            Error::Config(format!(
                "http.listen: {l:?} is not PORT or ADDR:PORT (e.g. 8080, 127.0.0.1:8080, 0.0.0.0:8080)"
            ))
        };
        if let Ok(port) = l.parse::<u16>() {
            return Ok(Some(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        l.parse::<SocketAddr>().map(Some).map_err(|_| bad())
    }

    pub fn validate(&self) -> Result<()> {
        self.address()?;
        if !(self.ready_within_s > 0.0 && self.ready_within_s <= 3600.0) {
            return Err(Error::Config(format!(
                "http.ready_within_s: {} is outside (0, 3600]",
                self.ready_within_s
            )));
        }
        if self.token_env.is_some() && self.token_file.is_some() {
            return Err(Error::Config(
                "http: give token_env or token_file, not both".into(),
            ));
        }
        Ok(())
    }

    /// The token, read now (a missing variable or file is an error, not an open API).
    pub fn token(&self) -> Result<Option<String>> {
        let raw = if let Some(var) = &self.token_env {
            std::env::var(var).map_err(|_| {
                Error::Config(format!(
                    "http.token_env: environment variable {var} is not set"
                ))
            })?
        } else if let Some(path) = &self.token_file {
            std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?
        } else {
            return Ok(None);
        };
        let t = raw.trim().to_string();
        if t.len() < 16 {
            return Err(Error::Config(
                "http token: use at least 16 characters (e.g. `openssl rand -hex 24`)".into(),
            ));
        }
        Ok(Some(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_alone_means_loopback() {
        let c = |l: &str| HttpConfig {
            listen: Some(l.into()),
            ..Default::default()
        };
        assert_eq!(
            c("8080").address().unwrap().unwrap().to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            c("0.0.0.0:9000").address().unwrap().unwrap().to_string(),
            "0.0.0.0:9000"
        );
        let e = c("localhost").address().unwrap_err().to_string();
        assert!(e.contains("http.listen"), "{e}");
        assert!(HttpConfig::default().address().unwrap().is_none());
    }

    #[test]
    fn tokens_are_read_and_checked() {
        let var = "MASKSTREAM_TEST_HTTP_TOKEN_X";
        let c = HttpConfig {
            token_env: Some(var.into()),
            ..Default::default()
        };
        assert!(c.token().unwrap_err().to_string().contains(var));
        std::env::set_var(var, "short");
        assert!(c.token().unwrap_err().to_string().contains("16"));
        std::env::set_var(var, "0123456789abcdef0123\n");
        assert_eq!(c.token().unwrap().as_deref(), Some("0123456789abcdef0123"));
    }
}
