//! RTSP on loopback only: serving the annotated stream (with and without basic auth), and reading an
//! RTSP camera (an in-test server) into JSON Lines.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use maskstream::pipeline::config::{PipelineConfig, SourceConfig};
use maskstream::pipeline::{self, RunContext};

const MAGENTA: [u8; 3] = [255, 0, 255];

fn serving_config(creds_file: Option<std::path::PathBuf>) -> PipelineConfig {
    let mut cfg = common::cpu_pipeline();
    cfg.sources = vec![SourceConfig {
        uri: common::root()
            .join("assets/shapes-demo.mp4")
            .display()
            .to_string(),
        name: Some("demo".into()),
        max_frames: None,
        ..SourceConfig::new("")
    }];
    cfg.inference.score_threshold = 0.3;
    cfg.overlay.alpha = 1.0;
    cfg.overlay.colors = vec![MAGENTA; 4];
    cfg.output.rtsp = Some("rtsp://127.0.0.1:0/{name}".into());
    cfg.output.rtsp_credentials_file = creds_file;
    cfg
}

/// Starts the pipeline on a thread; returns the served URL, the stop flag and the join handle.
fn start(
    cfg: PipelineConfig,
) -> (
    String,
    Arc<AtomicBool>,
    std::thread::JoinHandle<maskstream::Result<pipeline::stats::Summary>>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = RunContext {
        stop: stop.clone(),
        progress: Box::new(pipeline::NoProgress),
        on_rtsp_ready: Some(Box::new(move |urls| {
            let _ = tx.send(urls);
        })),

        ..Default::default()
    };
    let handle = std::thread::spawn(move || pipeline::run(&cfg, ctx));
    let urls = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server announced its URL");
    (urls[0].clone(), stop, handle)
}

fn magenta_pixels(frame: &[u8]) -> usize {
    frame
        .chunks_exact(3)
        .filter(|p| p[0] > 190 && p[1] < 90 && p[2] > 190)
        .count()
}

#[test]
fn serves_annotated_stream_on_loopback() {
    let (url, stop, handle) = start(serving_config(None));
    assert!(
        url.starts_with("rtsp://127.0.0.1:") && !url.contains(":0/"),
        "{url}"
    );
    let got = common::gst_util::rtsp_frames(&url, None, 30, Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    let summary = handle.join().unwrap().unwrap();
    let got = got.unwrap();
    assert!(
        got.frames.len() >= 30,
        "received {} frames",
        got.frames.len()
    );
    assert_eq!((got.width, got.height), (640, 360));
    let best = got
        .frames
        .iter()
        .map(|f| magenta_pixels(f))
        .max()
        .unwrap_or(0);
    println!(
        "received {} frames; most overlay pixels in one frame: {best}; {summary}",
        got.frames.len()
    );
    assert!(
        best >= 100,
        "no overlay colour in the served frames (max {best} pixels)"
    );
}

#[test]
fn basic_auth_refuses_wrong_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::write(&creds, "alice:wonderland\n").unwrap();
    let (url, stop, handle) = start(serving_config(Some(creds)));
    let none = common::gst_util::rtsp_frames(&url, None, 1, Duration::from_secs(30));
    let wrong =
        common::gst_util::rtsp_frames(&url, Some(("alice", "nope")), 1, Duration::from_secs(30));
    let right = common::gst_util::rtsp_frames(
        &url,
        Some(("alice", "wonderland")),
        5,
        Duration::from_secs(120),
    );
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();
    for (what, r) in [("no credentials", &none), ("wrong credentials", &wrong)] {
        match r {
            Ok(d) => panic!("{what}: got {} frames", d.frames.len()),
            Err(e) => assert!(
                e.contains("Unauthorized") || e.contains("401") || e.contains("authent"),
                "{what}: {e}"
            ),
        }
    }
    let right = right.unwrap();
    assert!(right.frames.len() >= 5);
}

#[test]
fn reads_an_rtsp_camera_into_json_lines() {
    let camera = common::camera::Camera::demo_file();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("cam.jsonl");
    let mut cfg = common::cpu_pipeline();
    cfg.sources = vec![SourceConfig {
        uri: camera.url(),
        name: Some("cam".into()),
        max_frames: Some(200),
        ..SourceConfig::new("")
    }];
    cfg.output.jsonl = Some(jsonl.display().to_string());
    cfg.rtsp_input.reconnect_attempts = 0;
    let summary = pipeline::run(&cfg, RunContext::default()).unwrap();
    let records = maskstream::eval::read_jsonl(&jsonl).unwrap();
    println!("rtsp input: {} lines; {summary}", records.len());
    assert!(
        summary.sources[0].error.is_none(),
        "{:?}",
        summary.sources[0].error
    );
    // a live camera at 30 frames/s: how many are inferred depends on the machine (~19/s on 2 idle
    // cores, a few under load); what matters is that frames flow and every one is accounted for
    assert!(
        records.len() >= 10,
        "only {} frames inferred",
        records.len()
    );
    assert_eq!(
        records.len() as u64 + summary.sources[0].dropped,
        summary.sources[0].frames
    );
    let idx: Vec<u64> = records.iter().map(|r| r.frame.unwrap()).collect();
    assert!(idx.windows(2).all(|w| w[1] > w[0]));
    assert!(
        records.iter().map(|r| r.instances.len()).sum::<usize>() > 0,
        "no instances detected"
    );
}

/// A self-signed certificate for 127.0.0.1 (and its key) made with openssl.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// RTSPS: a client that trusts the server's certificate receives annotated frames; one that trusts
/// only another certificate is refused (the TLS handshake fails, no frame arrives).
#[test]
fn rtsps_serves_a_client_that_verifies_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (stranger, _) = self_signed(other.path());
    let mut cfg = serving_config(None);
    cfg.output.rtsp_tls_cert = Some(cert.clone());
    cfg.output.rtsp_tls_key = Some(key);
    let (url, stop, handle) = start(cfg);
    assert!(url.starts_with("rtsps://127.0.0.1:"), "{url}");
    let refused = common::gst_util::rtsps_frames(&url, &stranger, 1, Duration::from_secs(30));
    let got = common::gst_util::rtsps_frames(&url, &cert, 10, Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    let _ = handle.join().unwrap();
    assert!(
        refused.as_ref().map_or(true, |d| d.frames.is_empty()),
        "a client that does not trust the certificate got frames"
    );
    let got = got.unwrap();
    println!(
        "RTSPS: {} frames received by the verifying client; the other was refused: {:?}",
        got.frames.len(),
        refused.err()
    );
    assert!(got.frames.len() >= 10);
    assert_eq!((got.width, got.height), (640, 360));
}

/// A camera that wants credentials is read with them from the environment or a file (the URI holds
/// none); a credentials file others can read gets a warning.
#[test]
fn camera_credentials_come_from_the_environment_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let served_creds = dir.path().join("served");
    std::fs::write(&served_creds, "alice:wonderland\n").unwrap();
    let (url, stop, handle) = start(serving_config(Some(served_creds)));
    let reader = |section: &str, json: &std::path::Path| {
        let toml = dir.path().join("reader.toml");
        std::fs::write(
            &toml,
            format!(
                "engine = {:?}\nbackend = \"cpu\"\nthreads = 1\n[[source]]\nuri = {url:?}\n\
                 name = \"cam\"\nmax_frames = 5\n[rtsp_input]\nreconnect_attempts = 0\n{section}\n\
                 [output]\njsonl = {:?}\n",
                common::engine_dir().display().to_string(),
                json.display().to_string()
            ),
        )
        .unwrap();
        let mut c = common::maskstream();
        c.arg("run").arg(&toml).env("CAM_CREDS", "alice:wonderland");
        common::Bounded::bounded(&mut c)
    };
    let by_env = dir.path().join("env.jsonl");
    let env_run = reader("credentials_env = \"CAM_CREDS\"", &by_env);
    let file = dir.path().join("cam-creds");
    std::fs::write(&file, "alice:wonderland\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let by_file = dir.path().join("file.jsonl");
    let file_run = reader(
        &format!("credentials_file = {:?}", file.display().to_string()),
        &by_file,
    );
    let refused = dir.path().join("none.jsonl");
    let none_run = reader("", &refused);
    stop.store(true, Ordering::Relaxed);
    let _ = handle.join().unwrap();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(env_run.status.success(), "{}", text(&env_run));
    assert!(file_run.status.success(), "{}", text(&file_run));
    assert!(
        text(&file_run).contains("readable by other users"),
        "{}",
        text(&file_run)
    );
    assert!(!none_run.status.success(), "read without credentials");
    // 5 frames decoded from a live camera; under load the oldest queued ones are dropped, not inferred
    for json in [&by_env, &by_file] {
        let lines = std::fs::read_to_string(json).unwrap().lines().count();
        assert!(
            (1..=5).contains(&lines),
            "{}: {lines} lines",
            json.display()
        );
    }
}
