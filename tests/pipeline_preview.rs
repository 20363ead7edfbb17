//! The preview window under Xvfb: a screenshot shows the overlay colours; SIGINT then stops the run
//! cleanly (exit 0, outputs finalized).

mod common;

use common::Reap;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn free_display() -> u32 {
    (90..600)
        .find(|n| {
            !std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                && !std::path::Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .unwrap_or(99)
}

#[test]
fn preview_window_shows_masks_and_sigint_finalizes() {
    let n = free_display();
    let display = format!(":{n}");
    let _xvfb = Reap(
        Command::new("Xvfb")
            .args([
                display.as_str(),
                "-screen",
                "0",
                "800x600x24",
                "-nolisten",
                "tcp",
                // without it the server resets whenever its last client leaves (each screenshot, and
                // autovideosink's probe of xvimagesink), and a connection made meanwhile fails
                "-noreset",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb (installed by scripts/setup.sh)"),
    );
    let socket = format!("/tmp/.X11-unix/X{n}");
    let t0 = Instant::now();
    while !std::path::Path::new(&socket).exists() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("preview.toml");
    let video = dir.path().join("preview.mp4");
    std::fs::write(
        &cfg,
        format!(
            "engine = {:?}\nbackend = \"cpu\"\n[[source]]\nuri = {:?}\n[inference]\nscore_threshold = 0.3\n\
             [overlay]\nalpha = 1.0\ncolors = [[255, 0, 255], [255, 0, 255], [255, 0, 255], [255, 0, 255]]\n\
             [output]\npreview = true\nvideo = {:?}\n",
            common::engine_dir().display().to_string(),
            common::root().join("assets/shapes-demo.mp4").display().to_string(),
            video.display().to_string(),
        ),
    )
    .unwrap();
    let child = common::maskstream()
        .args(["run"])
        .arg(&cfg)
        .env("DISPLAY", &display)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let mut child = Reap(child);
    let shot = dir.path().join("shot.png");
    let mut best = 0usize;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(90) && best < 200 {
        std::thread::sleep(Duration::from_millis(700));
        let ok = Command::new("gst-launch-1.0")
            .args([
                "-q",
                "ximagesrc",
                &format!("display-name={display}"),
                "num-buffers=1",
                "!",
                "videoconvert",
                "!",
                "pngenc",
                "!",
                "filesink",
            ])
            .arg(format!("location={}", shot.display()))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            continue;
        }
        if let Ok(img) = image::open(&shot) {
            let rgb = img.to_rgb8();
            let n = rgb
                .pixels()
                .filter(|p| p[0] > 200 && p[1] < 60 && p[2] > 200)
                .count();
            best = best.max(n);
        }
    }
    if best < 200 {
        let _ = child.0.kill();
        let _ = child.0.wait();
        let mut err = String::new();
        if let Some(mut e) = child.0.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        panic!("screenshots of the preview on {display} show only {best} overlay pixels; maskstream said:\n{err}");
    }
    kill(pid, Signal::SIGINT).unwrap();
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "after SIGINT: {status:?}\n{err}");
    assert!(err.contains("stopped by signal"), "{err}");
    // the MP4 written so far is finalized and plays
    let decoded = common::gst_util::decode_file(&video, false).unwrap();
    assert!(!decoded.frames.is_empty());
    println!(
        "preview: {best} overlay pixels in a screenshot; {} frames in the finalized MP4",
        decoded.frames.len()
    );
}

/// No display at all: a clear error and exit 1, not a crash (autovideosink fell through to DirectFB,
/// whose thread segfaulted) and not a hang (the source could block on its last message).
#[test]
fn preview_without_a_display_is_a_clear_error() {
    use common::Bounded;
    let out = common::run_demo_on_cpu()
        .arg("--preview")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .bounded();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no window could be opened"), "{err}");
}
