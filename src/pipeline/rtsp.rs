//! RTSP server sink (gstreamer-rtsp-server): one mount per source, H.264 over RTP, shared by all clients,
//! optional basic auth. The server runs its own GLib main loop thread.

use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::gio;
use gstreamer_rtsp_server::prelude::*;

use crate::error::{Error, Result};

/// rtsp://HOST:PORT/PATH split into its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeAddress {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl ServeAddress {
    pub fn parse(url: &str) -> Result<Self> {
        let bad =
            |why: &str| Error::Config(format!("{url:?}: {why} (expected rtsp://HOST:PORT/PATH)"));
        let rest = url
            .strip_prefix("rtsp://")
            .or_else(|| url.strip_prefix("rtsps://"))
            .ok_or_else(|| bad("not an rtsp:// URL"))?;
        let (hostport, path) = rest.split_once('/').ok_or_else(|| bad("no mount path"))?;
        let (host, port) = hostport.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        if host.is_empty() || path.is_empty() || host.contains('@') {
            return Err(bad("empty host or path (credentials never go in the URL)"));
        }
        Ok(ServeAddress {
            host: host.to_string(),
            port,
            path: format!("/{path}"),
        })
    }

    /// Loopback addresses are reachable from this machine only.
    pub fn is_loopback(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// The server's certificate and key (PEM) for RTSPS.
pub struct Tls {
    certificate: gio::TlsCertificate,
}

impl Tls {
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Self> {
        for p in [cert, key] {
            std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        }
        let certificate = gio::TlsCertificate::from_files(cert, key).map_err(|e| {
            Error::Config(format!(
                "output.rtsp_tls_cert {} / rtsp_tls_key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
        Ok(Tls { certificate })
    }
}

/// `user:password` for basic auth.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<hidden>)")
    }
}

impl Credentials {
    pub fn parse(text: &str, from: &str) -> Result<Self> {
        let line = text.lines().next().unwrap_or("").trim();
        let (user, password) = line
            .split_once(':')
            .filter(|(u, p)| !u.is_empty() && !p.is_empty())
            .ok_or_else(|| Error::Config(format!("{from}: expected user:password")))?;
        Ok(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

type Clients = Arc<Mutex<Vec<gst_app::AppSrc>>>;

/// A running RTSP server.
pub struct RtspServer {
    server: rtsp::RTSPServer,
    main_loop: gst::glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
    _source_id: Option<gst::glib::SourceId>,
    pub port: u16,
    pub host: String,
    tls: bool,
    /// The mount path, `{name}` standing for each source's name.
    path: String,
    /// Viewers need the credentials.
    auth: bool,
}

/// Frames for one mount: pushed into every live media of that mount.
#[derive(Clone)]
pub struct Mount {
    clients: Clients,
    pub path: String,
}

impl RtspServer {
    pub fn start(
        addr: &ServeAddress,
        credentials: Option<Credentials>,
        tls: Option<Tls>,
    ) -> Result<Self> {
        let (host, port) = (addr.host.as_str(), addr.port);
        let auth = credentials.is_some();
        if !addr.is_loopback() && credentials.is_none() {
            tracing::warn!(%host, "serving RTSP beyond this machine without credentials");
            eprintln!(
                "warning: serving RTSP on {host} without credentials: anyone who can reach it can \
                 watch (set output.rtsp_credentials_env or _file)"
            );
        }
        if !addr.is_loopback() && credentials.is_some() && tls.is_none() {
            tracing::warn!("basic auth over plain RTSP sends the password in cleartext");
        }
        let server = rtsp::RTSPServer::new();
        server.set_address(host);
        server.set_service(&port.to_string());
        if credentials.is_some() || tls.is_some() {
            let auth = rtsp::RTSPAuth::new();
            let mut token = rtsp::RTSPToken::builder()
                .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
                .build();
            match &credentials {
                Some(c) => {
                    let basic = rtsp::RTSPAuth::make_basic(&c.user, &c.password);
                    auth.add_basic(basic.as_str(), &token);
                }
                // TLS alone: every client that completes the handshake may watch
                None => auth.set_default_token(Some(&mut token)),
            }
            if let Some(t) = &tls {
                auth.set_tls_certificate(Some(&t.certificate));
            }
            server.set_auth(Some(&auth));
        }
        let ctx = gst::glib::MainContext::new();
        let source_id = server
            .attach(Some(&ctx))
            .map_err(|e| Error::Pipeline(format!("RTSP server on {host}:{port}: {e}")))?;
        let bound = server.bound_port();
        if bound <= 0 {
            return Err(Error::Pipeline(format!(
                "RTSP server could not bind {host}:{port}"
            )));
        }
        let main_loop = gst::glib::MainLoop::new(Some(&ctx), false);
        let ml = main_loop.clone();
        let thread = std::thread::Builder::new()
            .name("rtsp-server".into())
            .spawn(move || {
                let _guard = ctx.acquire();
                ml.run();
            })
            .map_err(|e| Error::Pipeline(format!("RTSP server thread: {e}")))?;
        tracing::info!(address = %format!("rtsp://{host}:{bound}"), auth = credentials.is_some(), tls = tls.is_some(), "RTSP server listening");
        Ok(RtspServer {
            server,
            main_loop,
            thread: Some(thread),
            _source_id: Some(source_id),
            port: bound as u16,
            host: host.to_string(),
            tls: tls.is_some(),
            path: addr.path.clone(),
            auth,
        })
    }

    /// The mount of a source: the served path with its name, credentials when the server has them.
    pub fn mount_source(&self, name: &str) -> Result<Mount> {
        self.mount(&super::config::expand(&self.path, name), self.auth)
    }

    /// Adds a mount. It can be played from now on; media start once the first frame is pushed (the
    /// frame size and rate are only known then). `auth`: viewers need the credentials' role (always
    /// the case on a TLS server, whose default token carries it).
    pub fn mount(&self, path: &str, auth: bool) -> Result<Mount> {
        let auth = auth || self.tls;
        let mounts = self
            .server
            .mount_points()
            .ok_or_else(|| Error::Pipeline("RTSP server has no mount points".into()))?;
        let factory = rtsp::RTSPMediaFactory::new();
        factory.set_launch(
            // bounded and leaky at every step: when the media cannot keep up, the oldest queued frames
            // are dropped here; frames never pile up in memory and pushing never blocks. (A stalled
            // TCP viewer is handled by the server: its backlog is bounded and the viewer is dropped,
            // while the other viewers of the shared media go on.)
            "( appsrc name=src is-live=true format=time do-timestamp=true block=false \
             max-buffers=4 leaky-type=downstream \
             ! queue max-size-buffers=4 max-size-bytes=0 max-size-time=0 leaky=downstream \
             ! videoconvert ! video/x-raw,format=I420 \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 \
             ! rtph264pay name=pay0 pt=96 config-interval=1 )",
        );
        factory.set_shared(true);
        if self.tls {
            // RTP over the TLS connection itself: plain UDP would carry the video unencrypted
            factory.set_protocols(gstreamer_rtsp::RTSPLowerTrans::TCP);
        }
        if auth {
            let perms = gst::Structure::builder("viewer")
                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                .build();
            factory.add_role_from_structure(&perms);
        }
        let clients: Clients = Arc::new(Mutex::new(Vec::new()));
        let c = clients.clone();
        factory.connect_media_configure(move |_, media| {
            let element = media.element();
            let Some(bin) = element.downcast_ref::<gst::Bin>() else {
                return;
            };
            let Some(src) = bin
                .by_name_recurse_up("src")
                .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            else {
                return;
            };
            if let Ok(mut list) = c.lock() {
                list.push(src);
            }
        });
        mounts.add_factory(path, factory);
        Ok(Mount {
            clients,
            path: path.to_string(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "rtsps" } else { "rtsp" };
        format!("{scheme}://{}:{}{}", self.host, self.port, path)
    }
}

impl Mount {
    /// Pushes a frame to every media currently playing this mount; dead ones are forgotten.
    pub fn push(&self, buffer: &gst::Buffer, caps: &gst::Caps) {
        let Ok(mut list) = self.clients.lock() else {
            return;
        };
        list.retain(|src| {
            if src.caps().as_ref() != Some(caps) {
                src.set_caps(Some(caps));
            }
            let mut b = buffer.copy();
            if let Some(m) = b.get_mut() {
                // the server's appsrc stamps buffers itself (do-timestamp): clear the file's timestamps
                m.set_pts(gst::ClockTime::NONE);
                m.set_dts(gst::ClockTime::NONE);
            }
            src.push_buffer(b).is_ok()
        });
    }

    pub fn clients(&self) -> usize {
        self.clients.lock().map(|l| l.len()).unwrap_or(0)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        // the server's GSource belongs to our private context and goes with it
        self._source_id.take();
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_address() {
        let a = ServeAddress::parse("rtsp://127.0.0.1:0/demo").unwrap();
        assert_eq!(
            a,
            ServeAddress {
                host: "127.0.0.1".into(),
                port: 0,
                path: "/demo".into()
            }
        );
        assert!(ServeAddress::parse("rtsp://u:p@host:1/x").is_err());
        assert!(ServeAddress::parse("http://h:1/x").is_err());
        assert!(ServeAddress::parse("rtsp://h/x").is_err());
    }

    #[test]
    fn credentials_are_hidden_in_debug() {
        let c = Credentials::parse("alice:s3cret\n", "test").unwrap();
        assert_eq!(c.user, "alice");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(Credentials::parse("nocolon", "test").is_err());
    }
}
