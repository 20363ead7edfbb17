//! RTSP reliability on loopback (127.0.0.1, port 0 only): the input camera drops and comes back, goes
//! away for good, or stalls; a stalled viewer of the served stream neither grows memory nor stalls
//! other viewers; a live source drops (and counts) frames when inference lags; credentials never reach
//! the logs.

mod common;

use common::camera::Camera;
use common::{jsonl_pts, line_count, Bounded};

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use maskstream::pipeline::config::{PipelineConfig, SourceConfig};
use maskstream::pipeline::stats::Summary;
use maskstream::pipeline::{self, RunContext};

fn camera_config(url: &str, jsonl: &Path) -> PipelineConfig {
    let mut cfg = common::cpu_pipeline();
    cfg.sources = vec![SourceConfig {
        uri: url.to_string(),
        name: Some("cam".into()),
        max_frames: None,
        ..SourceConfig::new("")
    }];
    cfg.output.jsonl = Some(jsonl.display().to_string());
    cfg.queue.capacity = Some(2);
    cfg
}

type Run = std::thread::JoinHandle<maskstream::Result<Summary>>;

fn spawn(cfg: PipelineConfig) -> (Arc<AtomicBool>, Run) {
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = RunContext {
        stop: stop.clone(),
        ..Default::default()
    };
    (stop, std::thread::spawn(move || pipeline::run(&cfg, ctx)))
}

/// Waits until the JSON Lines hold `n` lines; panics (naming `what`) after `limit`.
fn wait_lines(path: &Path, n: usize, limit: Duration, what: &str, run: &Run) -> Duration {
    let t0 = Instant::now();
    while line_count(path) < n {
        assert!(!run.is_finished(), "{what}: the pipeline ended early");
        assert!(
            t0.elapsed() < limit,
            "{what}: {} of {n} lines after {limit:?}",
            line_count(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// JSON lines after the last gap of over a second in the timestamps (the camera was away: a new
/// RTSP session continues the timeline after the time that passed); 0 while there is none.
fn new_session_frames(path: &Path) -> usize {
    let pts: Vec<u64> = jsonl_pts(path).into_iter().map(|(_, pts)| pts).collect();
    pts.windows(2)
        .rposition(|w| w[1] < w[0] || w[1] - w[0] > 1_000_000_000)
        .map_or(0, |r| pts.len() - r - 1)
}

/// (pts_ns, ts in ms since the epoch) of every line.
fn jsonl_times(path: &Path) -> Vec<(u64, i64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v = serde_json::from_str::<serde_json::Value>(l).unwrap();
            let ts = v["ts"].as_str().expect("ts on every frame record");
            let t = humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("ts {ts:?}: {e}"));
            let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            (v["pts_ns"].as_u64().unwrap(), ms)
        })
        .collect()
}

/// Every line is whole and parses; returns the frame indices.
fn frame_indices(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "last line is cut");
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["frame"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// The camera goes down for 2.5 s and comes back on the same port: the source reconnects with
/// back-off, frames resume and their indices keep increasing; the recording (MP4) and the served
/// stream run across the drop on one timeline: pts strictly increasing, the MP4's duration equal to
/// the wall-clock span of the frames, as many frames in the MP4 as in the JSON Lines.
fn reconnects_when_the_camera_comes_back(tcp: bool) {
    let mut camera = Camera::live_pattern();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("cam.jsonl");
    let video = dir.path().join("cam.mp4");
    let mut cfg = camera_config(&camera.url(), &jsonl);
    cfg.output.video = Some(video.display().to_string());
    cfg.output.rtsp = Some("rtsp://127.0.0.1:0/{name}".into());
    cfg.rtsp_input.tcp = tcp;
    cfg.rtsp_input.reconnect_attempts = 20;
    cfg.rtsp_input.reconnect_interval_ms = 250;
    cfg.rtsp_input.stall_timeout_ms = 3000;
    let (stop, run) = spawn(cfg);
    wait_lines(&jsonl, 5, Duration::from_secs(120), "before the drop", &run);
    camera.stop();
    let dropped_at = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    camera.restart();
    let down = dropped_at.elapsed();
    // frames of the new session: their timestamps start again (each connection is a new pipeline)
    let restarted = Instant::now();
    let mut first = None;
    let five = loop {
        let after = new_session_frames(&jsonl);
        if after >= 1 && first.is_none() {
            first = Some(restarted.elapsed());
        }
        if after >= 5 {
            break restarted.elapsed();
        }
        assert!(!run.is_finished(), "the pipeline ended");
        assert!(
            restarted.elapsed() < Duration::from_secs(120),
            "{after} frames of a new session 120 s after the camera came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let first = first.unwrap_or(five);
    stop.store(true, Ordering::Relaxed);
    let summary = run.join().unwrap().unwrap();
    let s = &summary.sources[0];
    println!(
        "tcp={tcp}: camera down {:.2} s; first frame of the new session {:.2} s and the fifth \
         {:.2} s after it came back (back-off 250 ms doubling to 2 s); {} reconnects; {} frames \
         decoded, {} dropped",
        down.as_secs_f64(),
        first.as_secs_f64(),
        five.as_secs_f64(),
        s.reconnects,
        s.frames,
        s.dropped
    );
    assert!(s.error.is_none(), "{:?}", s.error);
    assert!(s.reconnects >= 1, "no reconnect counted");
    let idx = frame_indices(&jsonl);
    assert!(
        idx.windows(2).all(|w| w[1] > w[0]),
        "frame indices must keep increasing across the gap: {idx:?}"
    );
    let times = jsonl_times(&jsonl);
    assert!(
        times.windows(2).all(|w| w[1].0 > w[0].0),
        "pts must increase strictly across the reconnect"
    );
    let (first, last) = (times[0], times[times.len() - 1]);
    let pts_span = (last.0 - first.0) as f64 / 1e9;
    let ts_span = (last.1 - first.1) as f64 / 1e3;
    let mp4 = common::gst_util::decode_file(&video, false).expect("the recording plays");
    let mp4_span = mp4.last_pts.unwrap_or(0) as f64 / 1e9 - mp4.first_pts.unwrap_or(0) as f64 / 1e9;
    println!(
        "tcp={tcp}: {} frames; pts span {pts_span:.2} s, wall-clock span {ts_span:.2} s, MP4 {} \
         frames spanning {mp4_span:.2} s",
        times.len(),
        mp4.frames.len()
    );
    assert_eq!(mp4.frames.len(), times.len(), "MP4 frames vs JSON lines");
    assert!(
        (pts_span - ts_span).abs() < 1.0,
        "the timeline ({pts_span:.2} s) must span the wall-clock time ({ts_span:.2} s)"
    );
    assert!(
        (mp4_span - pts_span).abs() < 0.1,
        "the MP4 ({mp4_span:.2} s) must span the frames ({pts_span:.2} s)"
    );
}

#[test]
fn reconnects_when_the_camera_comes_back_udp() {
    reconnects_when_the_camera_comes_back(false);
}

#[test]
fn reconnects_when_the_camera_comes_back_tcp() {
    reconnects_when_the_camera_comes_back(true);
}

#[test]
fn gives_up_after_the_configured_attempts() {
    let mut camera = Camera::live_pattern();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("cam.jsonl");
    let mut cfg = camera_config(&camera.url(), &jsonl);
    cfg.rtsp_input.reconnect_attempts = 3;
    cfg.rtsp_input.reconnect_interval_ms = 200;
    cfg.rtsp_input.stall_timeout_ms = 3000;
    let (_stop, run) = spawn(cfg);
    wait_lines(&jsonl, 3, Duration::from_secs(120), "before the drop", &run);
    camera.stop();
    let gone = Instant::now();
    // no stop flag: the pipeline must end by itself
    let t0 = Instant::now();
    while !run.is_finished() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "still retrying after 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let gave_up = gone.elapsed();
    let summary = run.join().unwrap().unwrap();
    let s = &summary.sources[0];
    println!(
        "camera gone for good: gave up {:.2} s later after {} reconnect attempts: {:?}",
        gave_up.as_secs_f64(),
        s.reconnects,
        s.error
    );
    let err = s.error.as_deref().expect("a source error");
    assert!(err.contains("gave up after 3 reconnect attempts"), "{err}");
    assert_eq!(s.reconnects, 3);
    assert_eq!(s.input, camera.url());
    frame_indices(&jsonl);
}

#[test]
fn binary_exits_non_zero_when_the_camera_never_answers() {
    // a port that was free a moment ago: connections are refused
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("rtsp://127.0.0.1:{port}/cam");
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("cam.toml");
    std::fs::write(
        &toml,
        format!(
            "engine = {:?}\nbackend = \"cpu\"\n[[source]]\nuri = {url:?}\n\
             [rtsp_input]\nreconnect_attempts = 2\nreconnect_interval_ms = 100\n",
            common::engine_dir().display().to_string()
        ),
    )
    .unwrap();
    let out = common::maskstream().arg("run").arg(&toml).bounded();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_ne!(out.status.code(), Some(101), "panicked: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    println!("{line}");
    assert!(line.contains(&url), "{line}");
    assert!(
        line.contains("gave up after 2 reconnect attempts"),
        "{line}"
    );
}

/// A TCP relay in front of the camera. `freeze` turns every connection open at that moment into a
/// black hole: nothing is forwarded any more, yet the connection stays open (no EOS, no error), as
/// when a camera hangs or a NAT drops the mapping. Later connections are relayed normally.
struct Relay {
    port: u16,
    /// Connections accepted so far (their ids are 0..accepted).
    accepted: Arc<AtomicUsize>,
    /// Connections with a smaller id are frozen.
    frozen_below: Arc<AtomicUsize>,
    quit: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let frozen_below = Arc::new(AtomicUsize::new(0));
        let quit = Arc::new(AtomicBool::new(false));
        let (acc, fb, q) = (accepted.clone(), frozen_below.clone(), quit.clone());
        std::thread::spawn(move || {
            while !q.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        down.set_nonblocking(false).unwrap();
                        let id = acc.load(Ordering::SeqCst);
                        let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue; // the client sees the connection close
                        };
                        for (from, to) in [
                            (down.try_clone().unwrap(), up.try_clone().unwrap()),
                            (up, down),
                        ] {
                            let (fb, q) = (fb.clone(), q.clone());
                            std::thread::spawn(move || pump(from, to, id, fb, q));
                        }
                        acc.store(id + 1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Relay {
            port,
            accepted,
            frozen_below,
            quit,
        }
    }

    /// Every connection made so far stalls; later ones are relayed.
    fn freeze_open_connections(&self) {
        self.frozen_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    id: usize,
    frozen_below: Arc<AtomicUsize>,
    quit: Arc<AtomicBool>,
) {
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !quit.load(Ordering::Relaxed) {
        if id < frozen_below.load(Ordering::SeqCst) {
            // a black hole: keep both sockets open, move nothing
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_stalled_stream_is_detected_and_reconnected() {
    let camera = Camera::live_pattern();
    let relay = Relay::start(camera.port);
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("cam.jsonl");
    let mut cfg = camera_config(&format!("rtsp://127.0.0.1:{}/cam", relay.port), &jsonl);
    cfg.rtsp_input.tcp = true; // RTP inside the relayed connection
    cfg.rtsp_input.reconnect_attempts = 5;
    cfg.rtsp_input.reconnect_interval_ms = 200;
    cfg.rtsp_input.stall_timeout_ms = 2000;
    let (stop, run) = spawn(cfg);
    wait_lines(
        &jsonl,
        5,
        Duration::from_secs(120),
        "before the stall",
        &run,
    );
    // everything open now stalls; connections made from here on are relayed
    relay.freeze_open_connections();
    let stalled_at = Instant::now();
    let frozen = relay.accepted.load(Ordering::SeqCst);
    // the source notices the stall (no EOS, no error ever comes) and connects anew
    while relay.accepted.load(Ordering::SeqCst) == frozen {
        assert!(
            stalled_at.elapsed() < Duration::from_secs(120),
            "no reconnect after a 120 s stall"
        );
        assert!(!run.is_finished(), "the pipeline ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let detected = stalled_at.elapsed();
    let reconnected = Instant::now();
    while new_session_frames(&jsonl) < 5 {
        assert!(!run.is_finished(), "the pipeline ended");
        assert!(
            reconnected.elapsed() < Duration::from_secs(120),
            "{} frames of the new session after 120 s",
            new_session_frames(&jsonl)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let back = reconnected.elapsed();
    stop.store(true, Ordering::Relaxed);
    let summary = run.join().unwrap().unwrap();
    let s = &summary.sources[0];
    println!(
        "stream froze: reconnected {:.2} s later (stall timeout 2 s), 5 frames of the new session \
         {:.2} s after that; {} reconnects",
        detected.as_secs_f64(),
        back.as_secs_f64(),
        s.reconnects
    );
    assert!(s.error.is_none(), "{:?}", s.error);
    assert!(s.reconnects >= 1);
    let idx = frame_indices(&jsonl);
    assert!(idx.windows(2).all(|w| w[1] > w[0]));
}

/// VmRSS of a process.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Reads one RTSP response (headers and body); returns (headers, body).
fn read_response(s: &mut std::io::BufReader<TcpStream>) -> (String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(s.read_line(&mut line).unwrap() > 0, "connection closed");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// A viewer that asks for RTP interleaved in its TCP connection, with a tiny receive buffer, and then
/// never reads: the server's sends to it stall at once.
fn stalled_viewer(url: &str) -> TcpStream {
    use nix::sys::socket::{connect, setsockopt, socket, sockopt, AddressFamily, SockFlag};
    use nix::sys::socket::{SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let rest = url.strip_prefix("rtsp://").unwrap();
    let (hostport, _) = rest.split_once('/').unwrap();
    let addr: std::net::SocketAddrV4 = hostport.parse().unwrap();
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::RcvBuf, &4096).unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::from(addr)).unwrap();
    let stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = std::io::BufReader::new(stream.try_clone().unwrap());
    write!(
        w,
        "DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"
    )
    .unwrap();
    let (head, sdp) = read_response(&mut r);
    let base = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Base:"))
        .map(|v| v.trim().trim_end_matches('/').to_string())
        .unwrap_or_else(|| url.to_string());
    let control = sdp
        .split("m=video")
        .nth(1)
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("a=control:")))
        .expect("a video control attribute")
        .trim()
        .to_string();
    let setup_url = if control.starts_with("rtsp://") {
        control
    } else {
        format!("{base}/{control}")
    };
    write!(
        w,
        "SETUP {setup_url} RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
    )
    .unwrap();
    let (head, _) = read_response(&mut r);
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("Session:"))
        .map(|v| v.split(';').next().unwrap().trim().to_string())
        .expect("a session");
    write!(
        w,
        "PLAY {base} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\nRange: npt=0-\r\n\r\n"
    )
    .unwrap();
    read_response(&mut r);
    stream
}

/// A healthy viewer that keeps reading (RTP over TCP, depayloaded, not decoded): counts the frames it
/// receives.
struct CountingViewer {
    pipeline: gst::Element,
    frames: Arc<AtomicUsize>,
}

impl CountingViewer {
    fn start(url: &str) -> Self {
        use gstreamer::prelude::*;
        gst::init().unwrap();
        let pipeline = gst::parse::launch(&format!(
            "rtspsrc location={url} latency=0 protocols=tcp ! rtph264depay ! h264parse \
             ! fakesink name=sink sync=false signal-handoffs=true"
        ))
        .unwrap();
        let frames = Arc::new(AtomicUsize::new(0));
        let f = frames.clone();
        let sink = pipeline
            .downcast_ref::<gst::Bin>()
            .unwrap()
            .by_name("sink")
            .unwrap();
        sink.connect("handoff", false, move |_| {
            f.fetch_add(1, Ordering::Relaxed);
            None
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        CountingViewer { pipeline, frames }
    }

    fn frames(&self) -> usize {
        self.frames.load(Ordering::Relaxed)
    }
}

impl Drop for CountingViewer {
    fn drop(&mut self) {
        use gstreamer::prelude::*;
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The largest RSS of a process seen over `window`, sampled every 250 ms.
fn peak_rss(pid: u32, window: Duration) -> u64 {
    let t0 = Instant::now();
    let mut peak = rss_bytes(pid);
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(rss_bytes(pid));
    }
    peak
}

/// `maskstream run` serving RTSP, as a child process (its memory is its own, apart from the tests
/// running beside it); stdout and stderr are collected, the served URL is read from stderr.
struct Server {
    child: std::process::Child,
    url: String,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = common::maskstream();
        cmd.arg("run").args(args);
        for (k, v) in env {
            cmd.env(k, v); // on the child only
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let err = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(u) = line.strip_prefix("serving ") {
                    let _ = tx.send(u.trim().to_string());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let mut server = Server {
            child,
            url: String::new(),
            out: Some(out),
            err: Some(err),
        };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => server.url = url,
            Err(_) => {
                let (_, logs) = server.stop();
                panic!("maskstream announced no URL:\n{logs}");
            }
        }
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, then its exit status and everything it printed.
    fn stop(&mut self) -> (std::process::ExitStatus, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = self
            .out
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        let err = self
            .err
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (status, format!("{out}{err}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_stalled_viewer_neither_grows_memory_nor_stalls_others() {
    // large frames, so that frames queuing up anywhere would show in the RSS at once
    let mut server = Server::start(
        &[
            "--input",
            "test://ball?width=1280&height=720&fps=10",
            "--serve",
            "rtsp://127.0.0.1:0/live",
            "--backend",
            "cpu",
            "--threads",
            "2",
        ],
        &[],
    );
    let (url, pid) = (server.url.clone(), server.pid());
    // a healthy viewer for the whole test (it also keeps the shared media, the encoder, alive)
    let healthy = CountingViewer::start(&url);
    // warm-up: the RSS of a run climbs by a few hundred MiB over its first ~50 frames (inference
    // arenas, allocator pools), whatever the viewers do; the comparison starts after that
    let t0 = Instant::now();
    while healthy.frames() < 50 {
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "{} frames served in 240 s",
            healthy.frames()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // the same kind of window without a stalled viewer: the RSS the run settles at
    let base = peak_rss(pid, Duration::from_secs(10));
    let before = healthy.frames();
    let stalled = stalled_viewer(&url);
    // 12 s at least, and until the healthy viewer got 10 more frames (however slow this machine)
    let t0 = Instant::now();
    let mut peak = rss_bytes(pid);
    while t0.elapsed() < Duration::from_secs(12)
        || (healthy.frames() - before < 10 && t0.elapsed() < Duration::from_secs(120))
    {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(rss_bytes(pid));
    }
    let stalled_for = t0.elapsed();
    let during = healthy.frames() - before;
    // the server did send to the stalled viewer: data waits unread in its socket
    stalled.set_nonblocking(true).unwrap();
    let waiting = stalled.peek(&mut [0u8; 1 << 16]).unwrap_or(0);
    // a viewer arriving while the stalled one is still connected (and still not reading)
    let late = common::gst_util::rtsp_frames(&url, None, 5, Duration::from_secs(120));
    drop(healthy);
    let (status, logs) = server.stop();
    let late = late.expect("a new viewer receives frames while another is stalled");
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "maskstream RSS: peak {:.1} MiB over 10 s before the stalled viewer, {:.1} MiB over its \
         {:.1} s (+{:.1} MiB); {waiting} bytes unread in the stalled socket; the healthy viewer got \
         {during} frames meanwhile, a late one {}",
        mb(base),
        mb(peak),
        stalled_for.as_secs_f64(),
        mb(peak.saturating_sub(base)),
        late.frames.len()
    );
    assert!(status.success(), "{status:?}: {logs}");
    assert!(waiting > 0, "the stalled viewer was sent nothing");
    assert!(
        during >= 10,
        "the healthy viewer got {during} frames in {stalled_for:?} while one was stalled"
    );
    assert!(late.frames.len() >= 5);
    assert!(
        peak.saturating_sub(base) < 50 << 20,
        "RSS grew {:.1} MiB with a stalled viewer",
        mb(peak - base)
    );
}

#[test]
fn a_live_source_drops_and_counts_frames_when_inference_lags() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("live.jsonl");
    let mut cfg = common::cpu_pipeline();
    cfg.sources = vec![SourceConfig {
        uri: "test://ball?width=320&height=240&fps=60".into(),
        name: Some("live".into()),
        max_frames: Some(120),
        ..SourceConfig::new("")
    }];
    cfg.queue.capacity = Some(2);
    cfg.output.jsonl = Some(jsonl.display().to_string());
    let summary = pipeline::run(&cfg, RunContext::default()).unwrap();
    let s = &summary.sources[0];
    let idx = frame_indices(&jsonl);
    println!(
        "live 60 frames/s: {} decoded, {} inferred, {} dropped",
        s.frames,
        idx.len(),
        s.dropped
    );
    assert!(s.error.is_none(), "{:?}", s.error);
    assert_eq!(s.frames, 120);
    assert!(s.dropped > 0, "the model is slower than 60 frames/s here");
    // every decoded frame is either inferred or counted as dropped
    assert_eq!(idx.len() as u64 + s.dropped, s.frames);
    // the oldest frames go: the newest one is always inferred
    assert_eq!(idx.last().copied(), Some(119));
    assert!(idx.windows(2).all(|w| w[1] > w[0]));
}

#[test]
fn credentials_never_reach_the_logs() {
    const PASSWORD: &str = "Zq9-p4ss-w0rd-7Kx";
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("serve.toml");
    std::fs::write(
        &toml,
        format!(
            "engine = {:?}\nbackend = \"cpu\"\nthreads = 2\n\
             [[source]]\nuri = \"test://ball?width=320&height=240&fps=10\"\nname = \"x\"\n\
             [output]\nrtsp = \"rtsp://127.0.0.1:0/x\"\nrtsp_credentials_env = \"MS_TEST_RTSP_CREDS\"\n",
            common::engine_dir().display().to_string()
        ),
    )
    .unwrap();
    let creds = format!("viewer:{PASSWORD}");
    let mut server = Server::start(
        &[toml.to_str().unwrap()],
        &[("RUST_LOG", "debug"), ("MS_TEST_RTSP_CREDS", &creds)],
    );
    let url = server.url.clone();
    let wrong =
        common::gst_util::rtsp_frames(&url, Some(("viewer", "wrong")), 1, Duration::from_secs(30));
    let right = common::gst_util::rtsp_frames(
        &url,
        Some(("viewer", PASSWORD)),
        3,
        Duration::from_secs(120),
    );
    let (status, logs) = server.stop();
    assert!(wrong.is_err(), "wrong password accepted");
    let right = right.unwrap_or_else(|e| panic!("right password refused: {e}\n{logs}"));
    assert!(right.frames.len() >= 3);
    assert!(status.success(), "{status:?}\n{logs}");
    // the logs were really at debug level, and talk about the server
    assert!(logs.contains("DEBUG"), "no debug output captured: {logs}");
    assert!(logs.contains("RTSP server listening"), "{logs}");
    let basic = base64(&creds);
    for secret in [PASSWORD, basic.as_str()] {
        assert!(
            !logs.contains(secret),
            "{secret:?} appears in the output:\n{logs}"
        );
    }
    println!("{} bytes of debug logs, no credentials in them", logs.len());
}

fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_server_that_accepts_but_never_answers_is_given_up_on() {
    // the connection opens, no RTSP reply ever comes: only the stall timeout can tell
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            h.lock().unwrap().push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("silent.jsonl");
    let mut cfg = camera_config(&format!("rtsp://127.0.0.1:{port}/cam"), &jsonl);
    cfg.rtsp_input.reconnect_attempts = 2;
    cfg.rtsp_input.reconnect_interval_ms = 100;
    cfg.rtsp_input.stall_timeout_ms = 1500;
    let t0 = Instant::now();
    let summary = pipeline::run(&cfg, RunContext::default()).unwrap();
    let s = &summary.sources[0];
    println!(
        "silent server: gave up after {:.2} s, {} connections, {:?}",
        t0.elapsed().as_secs_f64(),
        held.lock().unwrap().len(),
        s.error
    );
    let err = s.error.as_deref().expect("a source error");
    assert!(err.contains("gave up after 2 reconnect attempts"), "{err}");
    assert_eq!(s.reconnects, 2);
    assert_eq!(held.lock().unwrap().len(), 3, "one connection per attempt");
}

/// A camera that comes back at another resolution: the outputs keep the size they started with (the
/// new frames are scaled and letterboxed), so the recording never gets mismatched frames.
#[test]
fn a_camera_back_at_another_size_keeps_the_outputs_size() {
    let mut camera = Camera::live_pattern();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("cam.jsonl");
    let video = dir.path().join("cam.mp4");
    let mut cfg = camera_config(&camera.url(), &jsonl);
    cfg.output.video = Some(video.display().to_string());
    cfg.rtsp_input.reconnect_attempts = 20;
    cfg.rtsp_input.reconnect_interval_ms = 250;
    cfg.rtsp_input.stall_timeout_ms = 3000;
    let (stop, run) = spawn(cfg);
    wait_lines(&jsonl, 3, Duration::from_secs(120), "before the drop", &run);
    camera.stop();
    std::thread::sleep(Duration::from_millis(1500));
    camera.restart_at((640, 480));
    let t0 = Instant::now();
    while new_session_frames(&jsonl) < 3 {
        assert!(!run.is_finished(), "the pipeline ended");
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no frames after the camera came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let summary = run.join().unwrap().unwrap();
    assert!(
        summary.sources[0].error.is_none(),
        "{:?}",
        summary.sources[0].error
    );
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let sizes: Vec<(u64, u64)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["width"].as_u64().unwrap(), v["height"].as_u64().unwrap())
        })
        .collect();
    assert!(sizes.iter().all(|&s| s == (320, 240)), "{sizes:?}");
    let mp4 = common::gst_util::decode_file(&video, false).expect("the recording plays");
    assert_eq!((mp4.width, mp4.height), (320, 240));
    assert_eq!(mp4.frames.len(), sizes.len(), "MP4 frames vs JSON lines");
}
