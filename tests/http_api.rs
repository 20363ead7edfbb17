//! The HTTP API against the real binary: metrics checked by Prometheus' own `promtool`, health and
//! readiness, streams added and removed at run time (their outputs finalized), snapshots, MJPEG,
//! tokens, and the live page rendered by headless Chromium.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{get, mjpeg_parts, request, Served};

const TOKEN: &str = "test-token-0123456789abcdef";
const TOKEN_ENV: &str = "MASKSTREAM_TEST_HTTP_TOKEN";

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// A pipeline file with the HTTP API on a free loopback port, token from the environment.
fn pipeline(dir: &Path, body: &str) -> std::path::PathBuf {
    let text = format!(
        "engine = \"{engine}\"\nbackend = \"cpu\"\nthreads = 2\n{body}\n[http]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"{TOKEN_ENV}\"\n",
        engine = common::engine_dir().display(),
    );
    let p = dir.join("pipeline.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn serve(file: &Path) -> Served {
    let mut c = common::maskstream();
    c.arg("run").arg(file).env(TOKEN_ENV, TOKEN);
    Served::start(c)
}

fn stream(addr: &str, name: &str) -> Option<serde_json::Value> {
    let r = get(addr, "/api/streams");
    assert_eq!(r.status, 200);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `promtool check metrics` on a scrape: Prometheus' own parser and linter.
fn promtool_check(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, installed by scripts/setup.sh)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn streams_are_added_watched_and_removed_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let file = pipeline(
        dir.path(),
        &format!(
            "[[source]]\nuri = \"test://ball\"\nname = \"ball\"\n[output]\njsonl = \"{out}/{{name}}.jsonl\"\nvideo = \"{out}/{{name}}.mp4\"\n"
        ),
    );
    let s = serve(&file);
    let a = s.addr.as_str();
    assert_eq!(get(a, "/healthz").status, 200);
    s.wait_for("/readyz", Duration::from_secs(120), || {
        (get(a, "/readyz").status == 200).then_some(())
    });

    // metrics: valid for Prometheus, and the counters move
    let series = "maskstream_frames_total{source=\"ball\"}";
    let first = get(a, "/metrics");
    assert!(first
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    promtool_check(&first.text());
    let before = metric(&first.text(), series).expect("frames counter");
    for want in [
        "maskstream_stage_seconds_bucket{stage=\"backbone\"",
        "maskstream_batch_size_bucket",
        "maskstream_queue_depth{queue=\"source/ball\"}",
        "maskstream_dropped_frames_total{source=\"ball\"}",
        "maskstream_reconnects_total{source=\"ball\"}",
        "maskstream_tracks_active{source=\"ball\"}",
        "process_resident_memory_bytes",
    ] {
        assert!(first.text().contains(want), "{want} missing");
    }
    s.wait_for("frames counter to move", Duration::from_secs(60), || {
        let now = metric(&get(a, "/metrics").text(), series)?;
        (now > before).then_some(())
    });

    // changes need the token
    let body = br#"{"uri": "test://smpte", "name": "cam2"}"#;
    let json = ("Content-Type", "application/json");
    let r = request(a, "POST", "/api/streams", &[json], body);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = request(
        a,
        "POST",
        "/api/streams",
        &[json, ("Authorization", "Bearer nope")],
        body,
    );
    assert_eq!(r.status, 401);
    let auth = bearer();
    let auth = ("Authorization", auth.as_str());
    let r = request(a, "POST", "/api/streams", &[json, auth], b"{\"uri\": ");
    assert!(
        r.status == 400 || r.status == 422,
        "{} {}",
        r.status,
        r.text()
    );
    let r = request(
        a,
        "POST",
        "/api/streams",
        &[json, auth],
        br#"{"url": "test://smpte"}"#,
    );
    assert!(
        r.text().contains("url"),
        "names the bad field: {}",
        r.text()
    );
    let big = vec![b' '; 64 * 1024];
    let r = request(a, "POST", "/api/streams", &[json, auth], &big);
    assert_eq!(r.status, 413);
    let r = request(
        a,
        "POST",
        "/api/streams",
        &[json, auth],
        br#"{"uri": "test://smpte", "name": "a/b"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // add one
    let r = request(a, "POST", "/api/streams", &[json, auth], body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "cam2");
    let r = request(a, "POST", "/api/streams", &[json, auth], body);
    assert_eq!(r.status, 409, "same name twice: {}", r.text());
    let added = s.wait_for(
        "frames and events from cam2",
        Duration::from_secs(120),
        || {
            let v = stream(a, "cam2")?;
            (v["frames"].as_u64()? >= 5 && v["events"].as_u64()? >= 1).then_some(v)
        },
    );
    assert_eq!(added["state"], "running");
    let events = get(a, "/api/events?limit=1000").json();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["source"] == "cam2"),
        "recent events include the new stream's"
    );
    assert_eq!(get(a, "/api/events?limit=x").status, 400);

    // its pictures
    let snap = get(a, "/api/streams/cam2/snapshot.jpg");
    assert_eq!(snap.header("content-type"), Some("image/jpeg"));
    let img = image::load_from_memory(&snap.body).unwrap();
    assert_eq!(
        (img.width() as u64, img.height() as u64),
        (
            added["width"].as_u64().unwrap(),
            added["height"].as_u64().unwrap()
        )
    );
    let (ctype, parts) = mjpeg_parts(a, "/api/streams/cam2/live.mjpeg", 3);
    assert!(ctype.starts_with("multipart/x-mixed-replace"), "{ctype}");
    assert_eq!(parts.len(), 3);
    for p in &parts {
        image::load_from_memory(p).expect("each part is a JPEG");
    }
    assert_eq!(get(a, "/api/streams/nope/snapshot.jpg").status, 404);

    // remove it: outputs finalized, then it is gone from the metrics' moving counters
    let r = request(a, "DELETE", "/api/streams/cam2", &[], b"");
    assert_eq!(r.status, 401);
    let r = request(a, "DELETE", "/api/streams/cam2", &[auth], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "removed");
    let frames = r.json()["frames"].as_u64().unwrap() as usize;
    let jsonl = dir.path().join("cam2.jsonl");
    assert_eq!(
        common::line_count(&jsonl),
        frames,
        "every frame written once removed"
    );
    let video = common::gst_util::decode_file(&dir.path().join("cam2.mp4"), false)
        .expect("the removed stream's MP4 is finalized and plays");
    assert_eq!(video.frames.len(), frames, "MP4 frames = JSON lines");
    let r = request(a, "DELETE", "/api/streams/cam2", &[auth], b"");
    assert_eq!(r.status, 404);
    assert_eq!(
        stream(a, "ball").unwrap()["state"],
        "running",
        "the other stream goes on"
    );
    promtool_check(&get(a, "/metrics").text());
}

/// /readyz follows the camera; a camera that gave up stays listed as failed and can be added again,
/// same name, without restarting the process.
#[test]
fn readiness_follows_the_camera_and_a_camera_that_gave_up_comes_back() {
    let mut camera = common::camera::Camera::live_pattern();
    let url = camera.url();
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(
        dir.path(),
        &format!(
            "[[source]]\nuri = \"{url}\"\nname = \"door\"\n[rtsp_input]\nreconnect_attempts = 6\n\
             reconnect_interval_ms = 500\nstall_timeout_ms = 2000\n"
        ),
    );
    // readiness wants a frame within 2 s
    let text = std::fs::read_to_string(&file).unwrap() + "ready_within_s = 2\n";
    std::fs::write(&file, text).unwrap();
    let s = serve(&file);
    let a = s.addr.as_str();
    s.wait_for("ready", Duration::from_secs(120), || {
        (get(a, "/readyz").status == 200).then_some(())
    });
    camera.stop();
    let r = s.wait_for("not ready", Duration::from_secs(30), || {
        let r = get(a, "/readyz");
        (r.status == 503).then_some(r)
    });
    assert!(r.text().contains("door"), "{}", r.text());
    let gone = s.wait_for("the source to give up", Duration::from_secs(120), || {
        stream(a, "door").filter(|v| v["state"] == "failed")
    });
    assert!(gone["last_error"].as_str().is_some_and(|e| !e.is_empty()));
    camera.restart();
    let auth = bearer();
    let body = format!(r#"{{"uri": "{url}", "name": "door"}}"#);
    let r = request(
        a,
        "POST",
        "/api/streams",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    s.wait_for(
        "frames from the camera added again",
        Duration::from_secs(120),
        || {
            let v = stream(a, "door")?;
            (v["state"] == "running" && v["frames"].as_u64()? >= 3).then_some(())
        },
    );
    s.wait_for("ready again", Duration::from_secs(30), || {
        (get(a, "/readyz").status == 200).then_some(())
    });
}

/// Beyond loopback the token guards everything, and without one the API refuses to start.
#[test]
fn beyond_loopback_every_route_needs_the_token() {
    let out = common::maskstream()
        .args(["run", "--input", "test://ball", "--http", "0.0.0.0:0"])
        .env_remove(TOKEN_ENV)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("token") && err.contains("0.0.0.0"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), "[[source]]\nuri = \"test://ball\"\n");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("127.0.0.1:0", "0.0.0.0:0");
    std::fs::write(&file, text).unwrap();
    let s = serve(&file);
    let a = s.addr.replace("0.0.0.0", "127.0.0.1");
    for path in ["/metrics", "/healthz", "/api/streams", "/"] {
        assert_eq!(get(&a, path).status, 401, "{path}");
    }
    let auth = bearer();
    let r = request(&a, "GET", "/metrics", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(get(&a, &format!("/healthz?token={TOKEN}")).status, 200);
}

/// Headless Chromium loads the page; the screenshot holds the stream's latest frame, masks drawn.
#[test]
fn the_live_page_shows_frames_with_masks_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let file = pipeline(
        dir.path(),
        &format!(
            "[[source]]\nuri = \"assets/shapes-demo.mp4\"\nname = \"demo\"\nmax_frames = 12\n\
             [output]\njsonl = \"{out}/{{name}}.jsonl\"\n"
        ),
    );
    let s = serve(&file);
    let a = s.addr.as_str();
    // the file ends; the page keeps its last frame
    s.wait_for("the demo to end", Duration::from_secs(180), || {
        stream(a, "demo").filter(|v| v["state"] == "ended")
    });
    let snap = get(a, "/api/streams/demo/snapshot.jpg");
    assert_eq!(snap.status, 200);
    let snap = image::load_from_memory(&snap.body).unwrap().to_rgb8();

    let shot = dir.path().join("page.png");
    let profile = tempfile::tempdir().unwrap();
    let status = Command::new("timeout")
        .arg("90")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("http://{a}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("chromium (Debian package, installed by scripts/setup.sh)");
    assert!(status.success(), "chromium failed: {status}");
    let page = image::open(&shot).unwrap().to_rgb8();

    // the snapshot appears, pixel for pixel (give or take JPEG decoding), somewhere on the page
    let (dx, dy, diff) = locate(&page, &snap);
    assert!(
        diff < 6.0,
        "the frame is not on the page (best mean difference {diff:.1} at {dx},{dy})"
    );

    // and it is the annotated frame: inside the masks of its record it differs from the input frame,
    // well away from every instance it does not
    let records: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("demo.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = records.last().unwrap();
    let index = last["frame"].as_u64().unwrap() as usize;
    let raw = common::gst_util::decode_file(&common::root().join("assets/shapes-demo.mp4"), true)
        .unwrap();
    let raw = &raw.frames[index];
    let (w, h) = (snap.width() as usize, snap.height() as usize);
    let mut inside = vec![false; w * h];
    let mut near = vec![false; w * h];
    let instances = last["instances"].as_array().unwrap();
    assert!(!instances.is_empty(), "the last frame has instances");
    for inst in instances {
        let counts =
            maskstream::rle::from_string(inst["mask"]["counts"].as_str().unwrap()).unwrap();
        let m = maskstream::rle::decode_counts(&counts, h, w).unwrap();
        // COCO RLE is column-major
        for x in 0..w {
            for y in 0..h {
                if m[x * h + y] != 0 {
                    inside[y * w + x] = true;
                }
            }
        }
        let b: Vec<f64> = inst["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let pad = 30.0;
        for y in ((b[1] - pad).max(0.0) as usize)..((b[3] + pad).min(h as f64) as usize) {
            for x in ((b[0] - pad).max(0.0) as usize)..((b[2] + pad).min(w as f64) as usize) {
                near[y * w + x] = true;
            }
        }
    }
    let (mut din, mut nin, mut dout, mut nout) = (0.0, 0usize, 0.0, 0usize);
    for p in 0..w * h {
        let d: f64 = (0..3)
            .map(|c| (snap.as_raw()[p * 3 + c] as f64 - raw[p * 3 + c] as f64).abs())
            .sum::<f64>()
            / 3.0;
        if inside[p] {
            din += d;
            nin += 1;
        } else if !near[p] {
            dout += d;
            nout += 1;
        }
    }
    let (din, dout) = (din / nin.max(1) as f64, dout / nout.max(1) as f64);
    assert!(
        nin > 100 && nout > 1000,
        "{nin} mask pixels, {nout} far pixels"
    );
    assert!(
        din > 8.0 && din > 2.5 * dout,
        "masks drawn: mean change {din:.1} inside the masks, {dout:.1} far from them"
    );
}

/// Where `needle` sits in `page` (top-left corner) by mean absolute difference over a sparse grid,
/// then the full mean difference there.
fn locate(page: &image::RgbImage, needle: &image::RgbImage) -> (u32, u32, f64) {
    let (pw, ph) = page.dimensions();
    let (nw, nh) = needle.dimensions();
    assert!(
        pw >= nw && ph >= nh,
        "page {pw}x{ph} smaller than the frame {nw}x{nh}"
    );
    let diff = |dx: u32, dy: u32, step: u32| {
        let (mut sum, mut n) = (0.0, 0u32);
        for y in (0..nh).step_by(step as usize) {
            for x in (0..nw).step_by(step as usize) {
                let a = page.get_pixel(dx + x, dy + y);
                let b = needle.get_pixel(x, y);
                sum += (0..3)
                    .map(|c| (a[c] as f64 - b[c] as f64).abs())
                    .sum::<f64>()
                    / 3.0;
                n += 1;
            }
        }
        sum / n as f64
    };
    let mut best = (0, 0, f64::MAX);
    for dy in 0..=(ph - nh).min(400) {
        for dx in 0..=(pw - nw).min(400) {
            let d = diff(dx, dy, 24);
            if d < best.2 {
                best = (dx, dy, d);
            }
        }
    }
    (best.0, best.1, diff(best.0, best.1, 1))
}

/// `batch --http`: the files' frames show in the metrics while the batch runs; no streams can be
/// added to a batch.
#[test]
fn a_batch_serves_its_metrics_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    let clip = videos.join("clip.mp4");
    let made = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            "pattern=ball",
            "num-buffers=150",
            "!",
            "video/x-raw,width=320,height=240,framerate=30/1",
            "!",
            "x264enc",
            "!",
            "mp4mux",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", clip.display()))
        .status()
        .unwrap();
    assert!(made.success());
    let mut c = common::maskstream();
    c.args([
        "batch",
        "--backend",
        "cpu",
        "--json-only",
        "--http",
        "127.0.0.1:0",
    ])
    .arg(&videos)
    .arg("--out-dir")
    .arg(dir.path().join("out"));
    let s = Served::start(c);
    let a = s.addr.as_str();
    let series = "maskstream_frames_total{source=\"clip\"}";
    let text = s.wait_for(
        "the clip's frames in the metrics",
        Duration::from_secs(120),
        || {
            let t = get(a, "/metrics").text();
            (metric(&t, series)? > 0.0).then_some(t)
        },
    );
    promtool_check(&text);
    let r = request(
        a,
        "POST",
        "/api/streams",
        &[("Content-Type", "application/json")],
        br#"{"uri": "test://ball"}"#,
    );
    assert!(
        r.status == 403 || r.status == 503,
        "{} {}",
        r.status,
        r.text()
    );
}

/// A stream added at run time is checked against every input and output the run has had: its
/// `{name}` may not spell another stream's input, nor the recording of a stream that has ended,
/// even with `overwrite`.
#[test]
fn a_stream_added_later_never_writes_over_the_runs_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let input = dir.path().join("clip.mp4");
    std::fs::copy(common::root().join("assets/shapes-demo.mp4"), &input).unwrap();
    let file = pipeline(
        dir.path(),
        &format!(
            "[[source]]\nuri = \"test://ball\"\nname = \"ball\"\n\
             [[source]]\nuri = \"{}\"\nname = \"short\"\nmax_frames = 10\n\
             [output]\nvideo = \"{out}/{{name}}.mp4\"\noverwrite = true\n",
            input.display()
        ),
    );
    let s = serve(&file);
    let a = s.addr.as_str();
    s.wait_for("the short file to end", Duration::from_secs(120), || {
        stream(a, "short").filter(|v| v["state"] == "ended")
    });
    let recorded = std::fs::read(dir.path().join("short.mp4")).unwrap();
    let before = std::fs::read(&input).unwrap();
    let auth = bearer();
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    let add = |name: &str| {
        let body = format!(r#"{{"uri": "test://smpte", "name": "{name}"}}"#);
        request(a, "POST", "/api/streams", &headers, body.as_bytes())
    };
    // "clip" writes clip.mp4: the ended stream's input
    let r = add("clip");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text().contains("would overwrite the input"),
        "{}",
        r.text()
    );
    // "short" again: its first recording stays
    let r = add("short");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("never replaced"), "{}", r.text());
    // another name is fine
    let r = add("short-2");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        std::fs::read(&input).unwrap(),
        before,
        "the input is untouched"
    );
    assert_eq!(
        std::fs::read(dir.path().join("short.mp4")).unwrap(),
        recorded,
        "the first recording is untouched"
    );
}

/// A client that never finishes its request headers is cut off (`HEADER_TIMEOUT`, 10 s): such
/// clients would otherwise hold connections, and their file descriptors, for good. A live MJPEG
/// viewer of a stream that ended gets the end of the response.
#[test]
fn slow_clients_are_cut_off_and_ended_streams_end_their_mjpeg() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(
        dir.path(),
        "[[source]]\nuri = \"test://ball\"\nname = \"ball\"\n\
         [[source]]\nuri = \"test://smpte\"\nname = \"short\"\nmax_frames = 30\n",
    );
    let s = serve(&file);
    let a = s.addr.as_str();
    let mut slow = std::net::TcpStream::connect(a).unwrap();
    slow.write_all(b"GET /api/streams HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    // the server answers 408 or just closes; either way the connection ends
    let _ = slow.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "the half-sent request held its connection {waited:?}"
    );
    println!(
        "cut off after {waited:?}: {:?}",
        String::from_utf8_lossy(&buf).lines().next()
    );
    assert_eq!(get(a, "/healthz").status, 200, "the server goes on");

    // a page elsewhere whose name was rebound to 127.0.0.1 (DNS rebinding) is refused
    let mut rebound = std::net::TcpStream::connect(a).unwrap();
    rebound
        .write_all(b"GET /api/streams HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    rebound.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

    let mut viewer = std::net::TcpStream::connect(a).unwrap();
    viewer
        .write_all(
            b"GET /api/streams/short/live.mjpeg HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    viewer
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut body = Vec::new();
    viewer
        .read_to_end(&mut body)
        .expect("the MJPEG response ends once its stream has ended");
    assert!(
        body.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&body[..40.min(body.len())])
    );
    assert_eq!(stream(a, "short").unwrap()["state"], "ended");
}
