//! MQTT output against the real broker: Debian's `mosquitto` on a free loopback port, started and
//! stopped by each test, and the real subscriber `mosquitto_sub` (an independent client: what it
//! prints is what any consumer would get). Every event of the events file arrives, across a broker
//! restart too; counts and availability are retained; TLS with a self-signed CA; wrong credentials
//! are a clear error.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{output_within, Reap};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// One inference run at a time: each uses every core, and the restart test needs its real-time pace.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto process with its own config file; stopped (SIGTERM, then SIGKILL) on drop.
struct Broker {
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Reap>,
}

impl Broker {
    /// Starts mosquitto with `listener PORT 127.0.0.1` and `extra` config lines.
    fn start(dir: &Path, extra: &str) -> Broker {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        // as root, mosquitto would switch to the `mosquitto` user, who cannot read our temp files
        let user = if nix::unistd::Uid::current().is_root() {
            "user root\n"
        } else {
            ""
        };
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nlog_dest stderr\n{user}{extra}"),
        )
        .unwrap();
        let mut b = Broker {
            port,
            conf,
            log: dir.join("mosquitto.log"),
            child: None,
        };
        b.restart();
        b
    }

    fn restart(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{MOSQUITTO}: {e} (scripts/setup.sh installs mosquitto)"));
        let mut reap = Reap(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = reap.0.try_wait() {
                panic!("mosquitto exited ({status}): {}", self.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "mosquitto is not listening after 10 s: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(reap);
    }

    /// SIGTERM (mosquitto saves its persistent sessions) and wait for the exit.
    fn stop(&mut self) {
        drop(self.child.take());
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `mosquitto_sub -v` on `<prefix>/#` with a persistent session: every line it printed, as (topic,
/// payload), collected by a thread.
struct Subscriber {
    _child: Reap,
    lines: Arc<Mutex<Vec<(String, String)>>>,
    port: u16,
    prefix: String,
    extra: Vec<String>,
}

impl Subscriber {
    /// Subscribes and waits until a probe published with `mosquitto_pub` comes back.
    fn start(port: u16, prefix: &str, id: &str, extra: &[&str]) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-v", "-q", "1", "-c", "-i", id])
            .args(["-t", &format!("{prefix}/#")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (scripts/setup.sh installs mosquitto-clients)");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
                l.lock()
                    .unwrap()
                    .push((topic.to_string(), payload.to_string()));
            }
        });
        let s = Subscriber {
            _child: Reap(child),
            lines,
            port,
            prefix: prefix.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let probe = format!("{prefix}/_probe");
        let t0 = Instant::now();
        loop {
            let _ = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-q", "1", "-t", &probe, "-m", "ready"])
                .args(&s.extra)
                .status();
            if s.wait_until(
                |l| l.iter().any(|(t, _)| *t == probe),
                Duration::from_millis(500),
            ) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "mosquitto_sub never received the probe"
            );
        }
        s
    }

    fn lines(&self) -> Vec<(String, String)> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the lines received (false after `limit`).
    fn wait_until(&self, done: impl Fn(&[(String, String)]) -> bool, limit: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            if done(&self.lines()) {
                return true;
            }
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The payloads received on `<prefix>/<leaf>`.
    fn payloads(&self, leaf: &str) -> Vec<String> {
        let topic = format!("{}/{leaf}", self.prefix);
        self.lines()
            .into_iter()
            .filter(|(t, _)| *t == topic)
            .map(|(_, p)| p)
            .collect()
    }

    /// A retained message: what a new subscriber to `topic` gets at once.
    fn retained(&self, topic: &str) -> String {
        let out = output_within(
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-t", topic, "-C", "1", "-W", "10"])
                .args(&self.extra),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "no retained message on {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Event ids of an events JSON Lines file.
fn file_event_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Event ids in the order they arrived (duplicates kept).
fn mqtt_event_ids(payloads: &[String]) -> Vec<String> {
    payloads
        .iter()
        .map(|p| {
            let v: serde_json::Value =
                serde_json::from_str(p).unwrap_or_else(|e| panic!("event {p:?}: {e}"));
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Waits until every id of `want` arrived on `<prefix>/<leaf>`; returns the ids received.
fn wait_for_ids(
    sub: &Subscriber,
    leaf: &str,
    want: &HashSet<String>,
    limit: Duration,
) -> Vec<String> {
    sub.wait_until(
        |_| {
            let got: HashSet<String> = mqtt_event_ids(&sub.payloads(leaf)).into_iter().collect();
            want.is_subset(&got)
        },
        limit,
    );
    mqtt_event_ids(&sub.payloads(leaf))
}

const LINE_SCENE: &str = "[[zone]]\nname = \"right_half\"\n\
    polygon = [[330, 0], [640, 0], [640, 360], [330, 360]]\n\
    [[line]]\nname = \"gate\"\nfrom = [320, 340]\nto = [320, 20]\n";

fn pipeline_file(dir: &Path, source: &str, extra: &str) -> PathBuf {
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        format!(
            "engine = \"engines/shapes\"\nbackend = \"cpu\"\nthreads = 2\n{source}\n{LINE_SCENE}{extra}"
        ),
    )
    .unwrap();
    p
}

#[test]
fn every_event_arrives_counts_are_retained_and_availability_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "allow_anonymous true\n");
    let sub = Subscriber::start(broker.port, "maskstream", "sub-all", &[]);
    let (events, jsonl) = (dir.path().join("e.jsonl"), dir.path().join("f.jsonl"));
    let pipeline = pipeline_file(
        dir.path(),
        "[[source]]\nuri = \"assets/shapes-line.mp4\"\nname = \"line\"\n",
        "",
    );
    let _one = one_at_a_time();
    let t0 = Instant::now();
    let out = output_within(
        common::maskstream()
            .arg("run")
            .arg(&pipeline)
            .arg("--events")
            .arg(&events)
            .arg("--json")
            .arg(&jsonl)
            .args(["--mqtt", &broker.url("mqtt")]),
        Duration::from_secs(300),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let want = file_event_ids(&events);
    assert!(want.len() >= 10, "only {} events in the file", want.len());
    let want_set: HashSet<String> = want.iter().cloned().collect();
    assert!(
        sub.wait_until(
            |l| l
                .iter()
                .any(|(t, p)| t == "maskstream/available" && p == "offline"),
            Duration::from_secs(20)
        ),
        "no offline on maskstream/available; {stderr}"
    );
    let got = wait_for_ids(&sub, "line/events", &want_set, Duration::from_secs(10));
    let got_set: HashSet<String> = got.iter().cloned().collect();
    println!(
        "run {:.1} s: {} of {} events arrived over MQTT ({} messages, {} duplicates); {}",
        t0.elapsed().as_secs_f64(),
        want_set.intersection(&got_set).count(),
        want.len(),
        got.len(),
        got.len() - got_set.len(),
        stderr
            .lines()
            .filter(|l| l.contains("mqtt"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert_eq!(
        got_set, want_set,
        "the events over MQTT differ from the file"
    );
    // each event exactly as in the file
    let file_lines: HashMap<String, String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["id"].as_str().unwrap().to_string(), l.to_string())
        })
        .collect();
    for p in sub.payloads("line/events") {
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(file_lines[v["id"].as_str().unwrap()], p);
    }
    // availability: online before any event, offline last
    let lines = sub.lines();
    let first_online = lines
        .iter()
        .position(|(t, p)| t == "maskstream/available" && p == "online")
        .expect("online");
    let first_event = lines
        .iter()
        .position(|(t, _)| t == "maskstream/line/events")
        .unwrap();
    assert!(first_online < first_event);
    let last_available = lines
        .iter()
        .rev()
        .find(|(t, _)| t == "maskstream/available")
        .unwrap();
    assert_eq!(last_available.1, "offline");
    assert!(
        sub.payloads("line/frames").is_empty(),
        "frames are off by default"
    );
    // counts: retained, a late subscriber gets the final occupancy and line totals
    let records = maskstream::eval::read_jsonl(&jsonl).unwrap();
    let last = records.last().unwrap().analytics.clone().unwrap();
    let counts: serde_json::Value =
        serde_json::from_str(&sub.retained("maskstream/line/counts")).unwrap();
    assert_eq!(counts, last);
    assert!(last["lines"]["gate"]["left_to_right"].as_u64().unwrap() > 0);
    assert_eq!(sub.retained("maskstream/available"), "offline");
    // only changes were published
    let published = sub.payloads("line/counts").len();
    assert!(
        published >= 2 && published < records.len(),
        "{published} counts"
    );
}

#[test]
fn events_and_frames_queued_while_the_broker_restarts_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let mut broker = Broker::start(
        dir.path(),
        &format!(
            "allow_anonymous true\npersistence true\npersistence_location {}/\n",
            store.display()
        ),
    );
    // a persistent session: what is published while it reconnects after the restart waits for it
    let sub = Subscriber::start(broker.port, "maskstream", "sub-restart", &[]);
    let camera = common::camera::Camera::demo_file();
    let (events, jsonl) = (dir.path().join("e.jsonl"), dir.path().join("f.jsonl"));
    let pipeline = pipeline_file(
        dir.path(),
        &format!(
            "[[source]]\nuri = \"{}\"\nname = \"cam\"\nmax_frames = 240\n\
             [rtsp_input]\nreconnect_attempts = 0\n",
            camera.url()
        ),
        &format!(
            "[output.mqtt]\nurl = \"{}\"\nframes = true\n",
            broker.url("mqtt")
        ),
    );
    let _one = one_at_a_time();
    let stderr_path = dir.path().join("stderr.txt");
    let mut run = Reap(
        common::maskstream()
            .arg("run")
            .arg(&pipeline)
            .arg("--events")
            .arg(&events)
            .arg("--json")
            .arg(&jsonl)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // the camera plays 10 s of video live (the run takes 8): stop the broker once frames flow, for 3 s
    let t0 = Instant::now();
    while common::line_count(&jsonl) < 3 {
        if let Ok(Some(s)) = run.0.try_wait() {
            panic!("maskstream ended early ({s}): {}", stderr());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no frames after 120 s: {}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let down = SystemTime::now();
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    let up = SystemTime::now();
    broker.restart();
    let status = wait_exit(&mut run.0, Duration::from_secs(180), &stderr);
    assert!(status.success(), "{}", stderr());
    let want = file_event_ids(&events);
    let want_set: HashSet<String> = want.iter().cloned().collect();
    assert!(!want.is_empty(), "no events");
    let got = wait_for_ids(&sub, "cam/events", &want_set, Duration::from_secs(30));
    let got_set: HashSet<String> = got.iter().cloned().collect();
    // frame records: the same, by frame index
    let records = maskstream::eval::read_jsonl(&jsonl).unwrap();
    let want_frames: HashSet<u64> = records.iter().map(|r| r.frame.unwrap()).collect();
    sub.wait_until(
        |_| frame_indices(&sub).is_superset(&want_frames),
        Duration::from_secs(20),
    );
    let frame_msgs = sub.payloads("cam/frames").len();
    let got_frames = frame_indices(&sub);
    // what was produced while the broker was down
    let in_outage = |ts: &str| {
        let t = humantime::parse_rfc3339(ts).unwrap();
        t >= down && t <= up
    };
    let frames_down = records
        .iter()
        .filter(|r| in_outage(r.ts.as_deref().unwrap()))
        .count();
    let events_down = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            in_outage(v["ts"].as_str().unwrap())
        })
        .count();
    let log = stderr();
    println!(
        "broker down 3 s mid-run: events {} of {} arrived ({} messages, {} duplicates; {} made \
         while it was down); frame records {} of {} ({} messages; {} made while it was down)\n{}",
        want_set.intersection(&got_set).count(),
        want.len(),
        got.len(),
        got.len() - got_set.len(),
        events_down,
        want_frames.intersection(&got_frames).count(),
        want_frames.len(),
        frame_msgs,
        frames_down,
        log.lines()
            .filter(|l| l.to_ascii_lowercase().contains("mqtt"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        frames_down > 0,
        "nothing was produced while the broker was down"
    );
    assert!(
        log.contains("connection lost") && log.contains("reconnected"),
        "{log}"
    );
    assert_eq!(got_set, want_set, "events lost across the broker restart");
    assert_eq!(
        got_frames, want_frames,
        "frame records lost across the restart"
    );
    // at least once: a duplicate only for what was in flight when the connection dropped
    let window = maskstream::pipeline::mqtt::WINDOW;
    assert!(
        got.len() - got_set.len() <= window,
        "{} duplicates",
        got.len() - got_set.len()
    );
    assert!(frame_msgs - got_frames.len() <= window);
}

fn frame_indices(sub: &Subscriber) -> HashSet<u64> {
    sub.payloads("cam/frames")
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_str(p).unwrap();
            v["frame"].as_u64().unwrap()
        })
        .collect()
}

fn wait_exit(
    child: &mut Child,
    limit: Duration,
    stderr: &dyn Fn() -> String,
) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            t0.elapsed() < limit,
            "maskstream still running after {limit:?}: {}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>-ca.pem`) and, signed by it, a server certificate for IP 127.0.0.1.
fn make_ca_and_server(dir: &Path, name: &str) {
    let ca = format!("{name}-ca");
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ],
        dir,
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &format!("{name}-server.key"),
            "-out",
            &format!("{name}-server.csr"),
        ],
        dir,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}-server.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            &format!("{name}-server.pem"),
        ],
        dir,
    );
}

fn password_file(dir: &Path, user: &str, password: &str) -> PathBuf {
    let path = dir.join("passwords");
    let out = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&path)
        .args([user, password])
        .output()
        .expect("mosquitto_passwd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

#[test]
fn tls_with_a_private_ca_and_credentials_delivers_events() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca_and_server(d, "good");
    make_ca_and_server(d, "other");
    let pw = password_file(d, "cam", "s3cret");
    let broker = Broker::start(
        d,
        &format!(
            "cafile {0}/good-ca.pem\ncertfile {0}/good-server.pem\nkeyfile {0}/good-server.key\n\
             allow_anonymous false\npassword_file {1}\n",
            d.display(),
            pw.display()
        ),
    );
    let ca = d.join("good-ca.pem");
    let sub = Subscriber::start(
        broker.port,
        "site1/cams",
        "sub-tls",
        &[
            "--cafile",
            ca.to_str().unwrap(),
            "-u",
            "cam",
            "-P",
            "s3cret",
        ],
    );
    let creds = d.join("mqtt-creds");
    std::fs::write(&creds, "cam:s3cret\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let events = d.join("e.jsonl");
    let mqtt = |ca: &Path| {
        format!(
            "[output.mqtt]\nurl = \"{}\"\ntopic_prefix = \"site1/cams\"\nclient_id = \"tls-test\"\n\
             credentials_file = \"{}\"\ntls_ca_file = \"{}\"\nqos = 1\nqueue = 1000\n",
            broker.url("mqtts"),
            creds.display(),
            ca.display()
        )
    };
    // a broker whose certificate does not chain to the configured CA: refused at once
    let pipeline = pipeline_file(
        d,
        "[[source]]\nuri = \"assets/shapes-line.mp4\"\nname = \"line\"\nmax_frames = 90\n",
        &mqtt(&d.join("other-ca.pem")),
    );
    let t0 = Instant::now();
    let out = output_within(
        common::maskstream().arg("run").arg(&pipeline),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("wrong CA: {:.1} s: {stderr}", t0.elapsed().as_secs_f64());
    assert!(!out.status.success());
    assert!(
        stderr.contains(&broker.url("mqtts")) && stderr.contains("TLS"),
        "{stderr}"
    );
    // the right CA
    let pipeline = pipeline_file(
        d,
        "[[source]]\nuri = \"assets/shapes-line.mp4\"\nname = \"line\"\nmax_frames = 90\n",
        &mqtt(&ca),
    );
    let _one = one_at_a_time();
    let out = output_within(
        common::maskstream()
            .arg("run")
            .arg(&pipeline)
            .arg("--events")
            .arg(&events),
        Duration::from_secs(300),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let want: HashSet<String> = file_event_ids(&events).into_iter().collect();
    assert!(!want.is_empty());
    let got: HashSet<String> = wait_for_ids(&sub, "line/events", &want, Duration::from_secs(20))
        .into_iter()
        .collect();
    println!("mqtts: {} of {} events arrived", got.len(), want.len());
    assert_eq!(got, want);
    assert_eq!(sub.retained("site1/cams/available"), "offline");
}

#[test]
fn wrong_or_missing_credentials_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "cam", "s3cret");
    let broker = Broker::start(
        dir.path(),
        &format!("allow_anonymous false\npassword_file {}\n", pw.display()),
    );
    let jsonl = dir.path().join("f.jsonl");
    let pipeline = pipeline_file(
        dir.path(),
        "[[source]]\nuri = \"assets/shapes-line.mp4\"\nname = \"line\"\n",
        "[output.mqtt]\nurl = \"mqtt://unused:1\"\ncredentials_env = \"MASKSTREAM_TEST_MQTT\"\n",
    );
    for creds in ["cam:wrong", "nobody:s3cret"] {
        let t0 = Instant::now();
        let out = output_within(
            common::maskstream()
                .arg("run")
                .arg(&pipeline)
                .arg("--json")
                .arg(&jsonl)
                .args(["--mqtt", &broker.url("mqtt")])
                .env("MASKSTREAM_TEST_MQTT", creds),
            Duration::from_secs(60),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "{creds}: exit {:?} in {:.1} s: {stderr}",
            out.status.code(),
            t0.elapsed().as_secs_f64()
        );
        assert!(!out.status.success());
        assert!(stderr.contains(&broker.url("mqtt")), "{stderr}");
        assert!(stderr.contains("refused"), "{stderr}");
        assert!(
            stderr.contains("not authorized") || stderr.contains("bad user name or password"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("s3cret") && !stderr.contains("wrong"),
            "{stderr}"
        );
        assert!(!jsonl.exists(), "frames were processed");
        assert!(t0.elapsed() < Duration::from_secs(20));
    }
    // batch: one connection for all its files, refused before any file is read
    let out_dir = dir.path().join("batch");
    let out = output_within(
        common::maskstream()
            .args([
                "batch",
                "assets/shapes-line.mp4",
                "--backend",
                "cpu",
                "--out-dir",
            ])
            .arg(&out_dir)
            .arg("--pipeline")
            .arg(&pipeline)
            .args(["--mqtt", &broker.url("mqtt")])
            .env("MASKSTREAM_TEST_MQTT", "cam:wrong"),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("batch: {stderr}");
    assert!(!out.status.success());
    assert!(
        stderr.contains(&broker.url("mqtt")) && stderr.contains("refused"),
        "{stderr}"
    );
    assert!(!out_dir.join("shapes-line.mp4.jsonl").exists());
    // no credentials at all
    let out = output_within(
        common::maskstream()
            .arg("run")
            .args(["--backend", "cpu", "--input", "assets/shapes-line.mp4"])
            .args(["--mqtt", &broker.url("mqtt")]),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&broker.url("mqtt")) && stderr.contains("not authorized"),
        "{stderr}"
    );
}

/// A TCP relay to the broker that can swallow everything in both directions for a while (messages
/// in flight get lost and unacknowledged, as on a dying link) and then cut every connection.
struct Relay {
    port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    swallowed: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(upstream: u16) -> Relay {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let swallowed = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (f, s, o) = (frozen.clone(), swallowed.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                o.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (f, s) = (f.clone(), s.clone());
                    std::thread::spawn(move || pump(from, to, &f, &s));
                }
            }
        });
        Relay {
            port,
            frozen,
            swallowed,
            open,
        }
    }

    /// Swallows all traffic for `d`, then closes every open connection (new ones pass again).
    fn drop_link(&self, d: Duration) -> usize {
        use std::sync::atomic::Ordering;
        self.frozen.store(true, Ordering::SeqCst);
        std::thread::sleep(d);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.frozen.store(false, Ordering::SeqCst);
        self.swallowed.load(Ordering::SeqCst)
    }
}

fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    frozen: &std::sync::atomic::AtomicBool,
    swallowed: &std::sync::atomic::AtomicUsize,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            swallowed.fetch_add(n, Ordering::SeqCst);
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn messages_lost_in_flight_are_sent_again_after_the_connection_drops() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "allow_anonymous true\n");
    let sub = Subscriber::start(broker.port, "maskstream", "sub-relay", &[]);
    let relay = Relay::start(broker.port);
    let (events, jsonl) = (dir.path().join("e.jsonl"), dir.path().join("f.jsonl"));
    let pipeline = pipeline_file(
        dir.path(),
        "[[source]]\nuri = \"assets/shapes-line.mp4\"\nname = \"line\"\nmax_frames = 120\n",
        &format!(
            "[output.mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nframes = true\n",
            relay.port
        ),
    );
    let _one = one_at_a_time();
    let stderr_path = dir.path().join("stderr.txt");
    let mut run = Reap(
        common::maskstream()
            .arg("run")
            .arg(&pipeline)
            .arg("--events")
            .arg(&events)
            .arg("--json")
            .arg(&jsonl)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let t0 = Instant::now();
    while common::line_count(&jsonl) < 5 {
        if let Ok(Some(s)) = run.0.try_wait() {
            panic!("maskstream ended early ({s}): {}", stderr());
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{}", stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    // frame records go out per frame: some are on the wire when the link dies
    let swallowed = relay.drop_link(Duration::from_secs(3));
    let status = wait_exit(&mut run.0, Duration::from_secs(240), &stderr);
    let log = stderr();
    assert!(status.success(), "{log}");
    let want: HashSet<String> = file_event_ids(&events).into_iter().collect();
    let got = wait_for_ids(&sub, "line/events", &want, Duration::from_secs(20));
    let got_set: HashSet<String> = got.iter().cloned().collect();
    let records = maskstream::eval::read_jsonl(&jsonl).unwrap();
    let want_frames: HashSet<u64> = records.iter().map(|r| r.frame.unwrap()).collect();
    let frames = |sub: &Subscriber| -> Vec<u64> {
        sub.payloads("line/frames")
            .iter()
            .map(|p| {
                serde_json::from_str::<serde_json::Value>(p).unwrap()["frame"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    sub.wait_until(
        |_| {
            frames(&sub)
                .into_iter()
                .collect::<HashSet<_>>()
                .is_superset(&want_frames)
        },
        Duration::from_secs(20),
    );
    let got_frames = frames(&sub);
    let got_frames_set: HashSet<u64> = got_frames.iter().copied().collect();
    println!(
        "link dropped after 3 s of silence ({swallowed} bytes swallowed): events {} of {} \
         ({} duplicates), frame records {} of {} ({} duplicates)",
        want.intersection(&got_set).count(),
        want.len(),
        got.len() - got_set.len(),
        want_frames.intersection(&got_frames_set).count(),
        want_frames.len(),
        got_frames.len() - got_frames_set.len()
    );
    assert!(swallowed > 0, "nothing was in flight when the link died");
    assert!(log.contains("connection lost"), "{log}");
    assert_eq!(got_set, want);
    assert_eq!(got_frames_set, want_frames);
}

#[test]
fn a_broker_that_is_down_at_start_gets_everything_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let mut broker = Broker::start(
        dir.path(),
        &format!(
            "allow_anonymous true\npersistence true\npersistence_location {}/\n",
            store.display()
        ),
    );
    // the subscriber's persistent session (saved when the broker stops) outlives the broker, so
    // what arrives before it reconnects waits for it
    let sub = Subscriber::start(broker.port, "maskstream", "sub-late", &[]);
    let (events, jsonl) = (dir.path().join("e.jsonl"), dir.path().join("f.jsonl"));
    let pipeline = pipeline_file(
        dir.path(),
        "[[source]]\nuri = \"assets/shapes-line.mp4\"\nname = \"line\"\nmax_frames = 90\n",
        // the HTTP API's metrics show the queue; the run still ends with its file
        "\n[http]\nlisten = \"127.0.0.1:0\"\nkeep_running = false\n",
    );
    let _one = one_at_a_time();
    broker.stop();
    let stderr_path = dir.path().join("stderr.txt");
    let mut run = Reap(
        common::maskstream()
            .arg("run")
            .arg(&pipeline)
            .arg("--events")
            .arg(&events)
            .arg("--json")
            .arg(&jsonl)
            .args(["--mqtt", &broker.url("mqtt")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // frames are processed while nobody answers
    let t0 = Instant::now();
    while common::line_count(&jsonl) < 5 {
        if let Ok(Some(s)) = run.0.try_wait() {
            panic!("maskstream ended early ({s}): {}", stderr());
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{}", stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(stderr().contains("unreachable"), "{}", stderr());
    let addr = stderr()
        .lines()
        .find_map(|l| l.strip_prefix("http: serving on http://"))
        .map(|a| a.trim_end_matches('/').to_string())
        .expect("the HTTP API address");
    let metrics = common::http::get(&addr, "/metrics").text();
    let queued: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("maskstream_mqtt_queued_messages "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MQTT queue gauge in\n{metrics}"));
    assert!(
        queued >= 1.0,
        "messages wait while the broker is down: {queued}"
    );
    broker.restart();
    let status = wait_exit(&mut run.0, Duration::from_secs(240), &stderr);
    assert!(status.success(), "{}", stderr());
    let want: HashSet<String> = file_event_ids(&events).into_iter().collect();
    assert!(!want.is_empty());
    let got: HashSet<String> = wait_for_ids(&sub, "line/events", &want, Duration::from_secs(30))
        .into_iter()
        .collect();
    println!(
        "broker down at start: {} of {} events arrived once it was up",
        got.len(),
        want.len()
    );
    assert_eq!(got, want);
}

/// A broker that closes the connection on packets over its size limit (mosquitto's
/// `max_packet_size`, as EMQX's or AWS IoT's 128 KB): with `max_packet_bytes` set to it, larger frame
/// records are dropped and counted, never sent, and every event still arrives.
#[test]
fn messages_over_the_brokers_packet_limit_do_not_block_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    // frame records of this clip are 0.6-1.5 kB, events 0.3 kB
    let broker = Broker::start(dir.path(), "allow_anonymous true\nmax_packet_size 1300\n");
    let sub = Subscriber::start(broker.port, "maskstream", "sub-limit", &[]);
    let (events, jsonl) = (dir.path().join("e.jsonl"), dir.path().join("f.jsonl"));
    let pipeline = pipeline_file(
        dir.path(),
        "[[source]]\nuri = \"assets/shapes-line.mp4\"\nname = \"line\"\n",
        &format!(
            "[output.mqtt]\nurl = \"{}\"\nframes = true\nmax_packet_bytes = 1300\n",
            broker.url("mqtt")
        ),
    );
    let _one = one_at_a_time();
    let out = output_within(
        common::maskstream()
            .arg("run")
            .arg(&pipeline)
            .arg("--events")
            .arg(&events)
            .arg("--json")
            .arg(&jsonl),
        Duration::from_secs(300),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("message too large, dropped"), "{stderr}");
    let want: HashSet<String> = file_event_ids(&events).into_iter().collect();
    assert!(want.len() >= 10, "only {} events", want.len());
    let got: HashSet<String> = wait_for_ids(&sub, "line/events", &want, Duration::from_secs(20))
        .into_iter()
        .collect();
    assert_eq!(got, want, "every event arrives");
    let frames = sub.payloads("line/frames");
    let records = common::line_count(&jsonl);
    println!("{} of {records} frame records arrived", frames.len());
    assert!(!frames.is_empty() && frames.len() < records);
    assert!(frames
        .iter()
        .all(|f| f.len() + "maskstream/line/frames".len() + 9 <= 1300));
    // mosquitto: "Client ... disconnected due to oversize packet"
    assert!(
        !broker.log_text().contains("oversize"),
        "nothing over the limit reached the broker: {}",
        broker.log_text()
    );
}
