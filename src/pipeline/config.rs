//! Pipeline files (`pipelines/*.toml`): sources, engine, backend, thresholds, queue policy, sinks.
//! Every key has a default; unknown keys and bad values are errors naming the key and the file.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::analytics::{AnalyticsConfig, LineConfig, Settings, TrackerConfig, ZoneConfig};
use crate::backend::{BackendKind, Provider};
use crate::engine::Precision;
use crate::error::{Error, Result};
use crate::overlay::OverlayStyle;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Engine folder.
    pub engine: PathBuf,
    pub backend: BackendKind,
    /// FP32 or INT8 graphs (auto: the engine's CPU default on CPU, FP32 on GPUs).
    pub precision: Precision,
    /// Inference threads (0 = all cores).
    pub threads: usize,
    #[serde(rename = "source")]
    pub sources: Vec<SourceConfig>,
    pub inference: InferenceConfig,
    pub queue: QueueConfig,
    pub overlay: OverlayStyle,
    pub output: OutputConfig,
    pub rtsp_input: RtspInputConfig,
    pub tracker: TrackerConfig,
    pub analytics: AnalyticsConfig,
    #[serde(rename = "zone")]
    pub zones: Vec<ZoneConfig>,
    #[serde(rename = "line")]
    pub lines: Vec<LineConfig>,
    pub http: crate::http::HttpConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            engine: PathBuf::from("engines/shapes"),
            backend: BackendKind::Auto,
            precision: Precision::Auto,
            threads: 0,
            sources: Vec::new(),
            inference: InferenceConfig::default(),
            queue: QueueConfig::default(),
            overlay: OverlayStyle::default(),
            output: OutputConfig::default(),
            rtsp_input: RtspInputConfig::default(),
            tracker: TrackerConfig::default(),
            analytics: AnalyticsConfig::default(),
            zones: Vec::new(),
            lines: Vec::new(),
            http: crate::http::HttpConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A file path, file:// or http(s):// URI, rtsp://..., v4l2:///dev/videoN, or test://PATTERN.
    pub uri: String,
    /// Used in output names ({name}); defaults to the file stem or the RTSP path.
    pub name: Option<String>,
    /// Stop after this many frames (all when absent).
    pub max_frames: Option<u64>,
    /// Frames larger than this are scaled down (aspect kept) in GStreamer before conversion; this
    /// bounds memory per frame and saves the conversion's CPU.
    #[serde(default = "SourceConfig::default_max_width")]
    pub max_width: u32,
    #[serde(default = "SourceConfig::default_max_height")]
    pub max_height: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Instances scoring below this are neither drawn nor written.
    pub score_threshold: f32,
    /// Frames of several streams inferred together (the role of nvstreammux). Unset: 1 on the CPU
    /// backend, where a batch brings no throughput but costs memory and latency (BENCHMARKS.md), and
    /// 4 on a GPU.
    pub max_batch: Option<usize>,
    /// How long the first frame of a batch waits for others.
    pub max_wait_ms: u64,
    /// Model calls in flight at once, each on its own copy of the model with an equal share of
    /// `threads` (pipeline/workers.rs). Unset or 0: 2 on the CPU backend with 2 threads or more (more
    /// frames a second; each frame takes longer), 1 on a GPU. 1: one frame at a time on every thread,
    /// the lowest latency.
    pub workers: usize,
}

impl InferenceConfig {
    /// `max_batch`, or its default for the provider the engine was loaded on.
    pub fn max_batch_for(&self, provider: Provider) -> usize {
        self.max_batch.unwrap_or(match provider {
            Provider::Cpu => 1,
            Provider::Cuda | Provider::TensorRt => 4,
        })
    }
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            score_threshold: 0.5,
            max_batch: None,
            max_wait_ms: 5,
            workers: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Frames buffered between stages. Unset: 8 for files (smooths decode and encode against
    /// inference) and 2 for live sources, where every queued frame is latency (a live pipeline with 8
    /// measured 433 ms decode-to-sink p50 against 189 ms with 2 on 2 cores).
    pub capacity: Option<usize>,
    /// How many nice levels below inference the threads that can wait for it run: encoding video
    /// files and decoding input files (0..19; 0: the same priority). They then work in the moments
    /// inference leaves cores idle instead of taking turns with it (pipeline/priority.rs). On a
    /// machine whose other processes keep every core busy, 0 keeps them from waiting behind those.
    pub background_nice: u8,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: None,
            background_nice: 19,
        }
    }
}

impl QueueConfig {
    pub const FILE_DEFAULT: usize = 8;
    pub const LIVE_DEFAULT: usize = 2;

    /// The capacity for a stage fed by live sources (`live`) or files only.
    pub fn capacity_for(&self, live: bool) -> usize {
        self.capacity.unwrap_or(if live {
            Self::LIVE_DEFAULT
        } else {
            Self::FILE_DEFAULT
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtspInputConfig {
    /// rtspsrc jitter-buffer latency.
    pub latency_ms: u32,
    /// Force RTP over TCP (otherwise UDP first, TCP as fallback).
    pub tcp: bool,
    /// Reconnect attempts after the stream drops (0 = give up at once).
    pub reconnect_attempts: u32,
    /// First back-off interval; doubles per attempt up to 8x.
    pub reconnect_interval_ms: u64,
    /// A stream that delivers no frame for this long (no EOS, no error either: a frozen camera, a
    /// half-open connection) counts as dropped and is reconnected (0 = wait forever).
    pub stall_timeout_ms: u64,
    /// Environment variable holding the cameras' `user:password` (kept off the command line and
    /// out of the URI, which then needs none).
    pub credentials_env: Option<String>,
    /// File holding the cameras' `user:password` (a warning is printed when others can read it).
    pub credentials_file: Option<PathBuf>,
}

impl Default for RtspInputConfig {
    fn default() -> Self {
        RtspInputConfig {
            latency_ms: 200,
            tcp: false,
            reconnect_attempts: 5,
            reconnect_interval_ms: 1000,
            stall_timeout_ms: 10_000,
            credentials_env: None,
            credentials_file: None,
        }
    }
}

/// Sinks: any combination. `{name}` in paths and mount points is replaced by the source's name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Annotated video file (.mp4 or .mkv, H.264).
    pub video: Option<String>,
    /// JSON Lines metadata file.
    pub jsonl: Option<String>,
    /// Serve the annotated stream: rtsp://HOST:PORT/PATH (port 0 = any free port).
    pub rtsp: Option<String>,
    /// Environment variable holding `user:password` for the RTSP server (basic auth).
    pub rtsp_credentials_env: Option<String>,
    /// File holding `user:password` for the RTSP server.
    pub rtsp_credentials_file: Option<PathBuf>,
    /// Analytics events (JSON Lines, one event a line, flushed per line).
    pub events: Option<String>,
    /// Show a preview window.
    pub preview: bool,
    /// x264 bitrate of encoded outputs, kbit/s. Unset: from the frame size (`default_bitrate_kbps`).
    pub bitrate_kbps: Option<u32>,
    /// x264 speed preset of the video file: CPU spent on encoding against size at the same bitrate.
    /// Unset: ultrafast when inference runs on the CPU, superfast beside a GPU (see `preset_for`).
    pub x264_preset: Option<X264Preset>,
    /// x264's threads for the video file (0: x264's own choice, about 1.5 a core). Unset: 1 when
    /// inference runs on the CPU, whose cores are inference's: one thread encodes the same frames
    /// with ~20% less CPU than x264's frame threads (demo, superfast) and still far faster than the
    /// model; x264's own choice on a GPU, where encoding a large frame on one core could hold a run
    /// back.
    pub x264_threads: Option<u32>,
    /// Replace output files that already exist (never an input of the run).
    pub overwrite: bool,
    /// MP4 recordings of live sources are written as fragments of this many milliseconds, so a
    /// killed run leaves a playable file holding all but the last fragment (0: one classic MP4 whose
    /// index is written at the end, unplayable if the process dies first). Outputs of files are
    /// classic MP4s: a crashed file run is redone from its input.
    pub fragment_ms: u32,
    /// PEM certificate (chain) and key: serve RTSPS (RTSP over TLS) instead of plain RTSP.
    pub rtsp_tls_cert: Option<PathBuf>,
    pub rtsp_tls_key: Option<PathBuf>,
    /// Publish events, counts and (optionally) frame records to an MQTT broker.
    pub mqtt: Option<MqttConfig>,
}

impl OutputConfig {
    /// The preset the video file is encoded with. Unset: on the CPU, whose cores inference keeps
    /// busy, ultrafast (the demo's 300 frames: ~1.0 ms of CPU a frame against superfast's ~2.1; with
    /// B-frames and 1.2x the bitrate, which `default_bitrate_kbps` gives it, the same quality: Y PSNR
    /// 44.2 dB against superfast's 44.1); beside a GPU, superfast, whose smaller files cost CPU that
    /// is idle there.
    pub fn preset_for(&self, inference_on_cpu: bool) -> X264Preset {
        self.x264_preset.unwrap_or(if inference_on_cpu {
            X264Preset::Ultrafast
        } else {
            X264Preset::Superfast
        })
    }
}

/// The bitrate (kbit/s) of a video file whose `bitrate_kbps` is unset: ~4.3 kbit/s a thousand
/// pixels (1 Mbit/s at 640x360, 9 at 1080p), 1.2x that for ultrafast, whose simpler coding (no
/// CABAC, deblocking or sub-pixel refinement) needs it for the same quality.
pub fn default_bitrate_kbps((width, height): (usize, usize), preset: X264Preset) -> u32 {
    let base = (width * height) as f64 / 230.0;
    let factor = if preset == X264Preset::Ultrafast {
        1.2
    } else {
        1.0
    };
    (base * factor).clamp(500.0, 20_000.0) as u32
}

/// x264's speed presets, fastest first (the names x264 and `x264enc speed-preset` use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum X264Preset {
    /// The default beside CPU inference (`OutputConfig::preset_for`).
    Ultrafast,
    /// The default beside a GPU: on a CPU shared with inference, veryfast's trellis quantization
    /// alone cost ~1.8 ms of a ~35 ms frame (640x360), for a barely smaller file at the same bitrate.
    Superfast,
    Veryfast,
    Faster,
    Fast,
    Medium,
    Slow,
    Slower,
    Veryslow,
}

impl X264Preset {
    /// The `speed-preset` value of x264enc.
    pub fn name(self) -> &'static str {
        match self {
            X264Preset::Ultrafast => "ultrafast",
            X264Preset::Superfast => "superfast",
            X264Preset::Veryfast => "veryfast",
            X264Preset::Faster => "faster",
            X264Preset::Fast => "fast",
            X264Preset::Medium => "medium",
            X264Preset::Slow => "slow",
            X264Preset::Slower => "slower",
            X264Preset::Veryslow => "veryslow",
        }
    }
}

/// `[output.mqtt]`: events to an MQTT broker (see `pipeline::mqtt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// mqtt://HOST[:PORT] (1883 by default) or mqtts://HOST[:PORT] (TLS, 8883 by default).
    pub url: String,
    /// Topics are `<topic_prefix>/<source>/events`, `.../counts`, `.../frames` and
    /// `<topic_prefix>/available`.
    pub topic_prefix: String,
    /// MQTT client id (default: maskstream-<host>-<pid>); two clients with one id evict each other.
    pub client_id: Option<String>,
    /// Environment variable holding the broker's `user:password`.
    pub credentials_env: Option<String>,
    /// File holding the broker's `user:password`.
    pub credentials_file: Option<PathBuf>,
    /// PEM CA certificate(s) the broker's certificate must chain to (mqtts:// only; default: the
    /// system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// 0 (at most once) or 1 (at least once: the broker acknowledges, unacknowledged messages are
    /// sent again after a reconnect).
    pub qos: u8,
    /// Also publish every frame record on `<prefix>/<source>/frames`.
    pub frames: bool,
    /// Messages buffered while the broker is unreachable; when full the oldest is dropped (and
    /// counted).
    pub queue: usize,
    /// The most MiB those messages may take together (frame records with masks are large): beyond
    /// it the oldest are dropped too.
    pub queue_mb: usize,
    /// The broker's largest packet (mosquitto's and EMQX's `max_packet_size`, AWS IoT's 128 KB):
    /// larger messages are dropped and counted here, instead of the broker closing the connection
    /// on them. Default: 64 MiB.
    pub max_packet_bytes: Option<usize>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: String::new(),
            topic_prefix: "maskstream".into(),
            client_id: None,
            credentials_env: None,
            credentials_file: None,
            tls_ca_file: None,
            qos: 1,
            frames: false,
            queue: Self::QUEUE_DEFAULT,
            queue_mb: Self::QUEUE_MB_DEFAULT,
            max_packet_bytes: None,
        }
    }
}

impl MqttConfig {
    pub const QUEUE_DEFAULT: usize = 10_000;
    pub const QUEUE_MAX: usize = 10_000_000;
    pub const QUEUE_MB_DEFAULT: usize = 64;
    pub const QUEUE_MB_MAX: usize = 65_536;
    /// The largest packet sent at all (a frame record with many masks).
    pub const MAX_PACKET: usize = 64 << 20;

    /// A broker with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        MqttConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    /// Every key; errors name it (`output.mqtt.KEY: why`).
    pub fn validate(&self) -> Result<()> {
        if self.url.is_empty() {
            return bad(
                "output.mqtt.url",
                "missing: the broker, as url = \"mqtt://HOST:PORT\" (or --mqtt)".into(),
            );
        }
        let addr = BrokerAddress::parse(&self.url)
            .map_err(|why| Error::Config(format!("output.mqtt.url: {why}")))?;
        let p = &self.topic_prefix;
        if p.is_empty() || p.starts_with('/') || p.ends_with('/') || p.contains(['+', '#', '\0']) {
            return bad(
                "output.mqtt.topic_prefix",
                format!("{p:?} must be non-empty, without + or # and not start or end with /"),
            );
        }
        if self
            .client_id
            .as_deref()
            .is_some_and(|c| c.is_empty() || c.len() > 65_535)
        {
            return bad("output.mqtt.client_id", "is empty or too long".into());
        }
        if self.credentials_env.is_some() && self.credentials_file.is_some() {
            return bad(
                "output.mqtt.credentials_env",
                "give credentials_env or credentials_file, not both".into(),
            );
        }
        if self.tls_ca_file.is_some() && !addr.tls {
            return bad(
                "output.mqtt.tls_ca_file",
                format!("needs an mqtts:// url, not {}", self.url),
            );
        }
        if self.qos > 1 {
            return bad(
                "output.mqtt.qos",
                format!(
                    "{} is not supported: 0 (at most once) or 1 (at least once; events carry an \
                     id to drop duplicates)",
                    self.qos
                ),
            );
        }
        if !(1..=Self::QUEUE_MAX).contains(&self.queue) {
            return bad(
                "output.mqtt.queue",
                format!("{} is outside 1..{}", self.queue, Self::QUEUE_MAX),
            );
        }
        if let Some(b) = self
            .max_packet_bytes
            .filter(|b| !(256..=Self::MAX_PACKET).contains(b))
        {
            return bad(
                "output.mqtt.max_packet_bytes",
                format!("{b} is outside 256..{}", Self::MAX_PACKET),
            );
        }
        if !(1..=Self::QUEUE_MB_MAX).contains(&self.queue_mb) {
            return bad(
                "output.mqtt.queue_mb",
                format!("{} is outside 1..{}", self.queue_mb, Self::QUEUE_MB_MAX),
            );
        }
        Ok(())
    }
}

/// Where an MQTT broker listens: `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerAddress {
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?}: expected mqtt://HOST:PORT or mqtts://HOST:PORT"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => {
                return Err(format!(
                    "{url:?}: the scheme must be mqtt:// or mqtts://, not {scheme}://"
                ))
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains(['/', '?', '#']) {
            return Err(format!("{url:?}: expected no path, only HOST:PORT"));
        }
        if authority.contains('@') {
            return Err(format!(
                "{url:?}: no user:password in the url; use credentials_env or credentials_file"
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match authority.rsplit_once(':') {
            // [v6]:port or host:port; a bare IPv6 address has more colons and needs brackets
            Some((h, p)) if !h.contains(':') || (h.starts_with('[') && h.ends_with(']')) => {
                let port: u16 = p
                    .parse()
                    .map_err(|_| format!("{url:?}: port {p:?} is not a number in 1..65535"))?;
                if port == 0 {
                    return Err(format!("{url:?}: port 0 is not a broker's port"));
                }
                (h, port)
            }
            Some(_) => return Err(format!("{url:?}: write an IPv6 address as [ADDR]:PORT")),
            None => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(BrokerAddress {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            video: None,
            jsonl: None,
            events: None,
            rtsp: None,
            rtsp_credentials_env: None,
            rtsp_credentials_file: None,
            preview: false,
            bitrate_kbps: None,
            x264_preset: None,
            x264_threads: None,
            overwrite: false,
            fragment_ms: 1000,
            rtsp_tls_cert: None,
            rtsp_tls_key: None,
            mqtt: None,
        }
    }
}

/// What a source URI names.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// A local file (decoded by uridecodebin).
    File(PathBuf),
    /// Any other URI uridecodebin reads (http, https, file).
    Uri(String),
    Rtsp(String),
    V4l2(String),
    Test {
        pattern: String,
        width: u32,
        height: u32,
        fps: u32,
        frames: Option<u64>,
    },
}

impl SourceKind {
    /// Live sources drop their oldest queued frame when inference lags; files never drop.
    pub fn is_live(&self) -> bool {
        match self {
            SourceKind::Rtsp(_) | SourceKind::V4l2(_) | SourceKind::Test { .. } => true,
            SourceKind::Uri(_) => self.is_network(),
            SourceKind::File(_) => false,
        }
    }

    /// Streams from the network (RTSP, HTTP(S) progressive, HLS, MJPEG): live, and reconnected when
    /// they drop.
    pub fn is_network(&self) -> bool {
        match self {
            SourceKind::Rtsp(_) => true,
            SourceKind::Uri(u) => {
                let lower = u.to_ascii_lowercase();
                [
                    "http://", "https://", "hls://", "srt://", "udp://", "rtmp://", "rtp://",
                ]
                .iter()
                .any(|p| lower.starts_with(p))
            }
            _ => false,
        }
    }

    pub fn default_name(&self) -> String {
        match self {
            SourceKind::File(p) => p
                .file_stem()
                .map_or("video".into(), |s| s.to_string_lossy().into_owned()),
            SourceKind::Uri(u) | SourceKind::Rtsp(u) => u
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty() && !s.contains(':'))
                .map_or("stream".into(), |s| {
                    s.split('.').next().unwrap_or(s).to_string()
                }),
            SourceKind::V4l2(d) => d.rsplit('/').next().unwrap_or("camera").to_string(),
            SourceKind::Test { pattern, .. } => format!("test-{pattern}"),
        }
    }
}

impl FromStr for SourceKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("source {s:?}: {why}"));
        if let Some(rest) = s.strip_prefix("test://") {
            let (pattern, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut kind = SourceKind::Test {
                pattern: if pattern.is_empty() {
                    "smpte".into()
                } else {
                    pattern.to_string()
                },
                width: 640,
                height: 360,
                fps: 30,
                frames: None,
            };
            if let SourceKind::Test {
                width,
                height,
                fps,
                frames,
                ..
            } = &mut kind
            {
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| bad("query items are key=value"))?;
                    let n: u64 = v
                        .parse()
                        .map_err(|_| bad(&format!("{k}={v} is not a number")))?;
                    match k {
                        "width" if (16..=8192).contains(&n) => *width = n as u32,
                        "height" if (16..=8192).contains(&n) => *height = n as u32,
                        "fps" if (1..=240).contains(&n) => *fps = n as u32,
                        "frames" => *frames = Some(n),
                        _ => {
                            return Err(bad(&format!(
                                "unknown or out-of-range test parameter {k}={v}"
                            )))
                        }
                    }
                }
            }
            return Ok(kind);
        }
        if s.starts_with("rtsp://") || s.starts_with("rtsps://") {
            return Ok(SourceKind::Rtsp(s.to_string()));
        }
        if let Some(dev) = s.strip_prefix("v4l2://") {
            if !dev.starts_with('/') {
                return Err(bad("expected v4l2:///dev/videoN"));
            }
            return Ok(SourceKind::V4l2(dev.to_string()));
        }
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(SourceKind::File(PathBuf::from(path)));
        }
        if s.contains("://") {
            return Ok(SourceKind::Uri(s.to_string()));
        }
        if s.is_empty() {
            return Err(bad("empty"));
        }
        Ok(SourceKind::File(PathBuf::from(s)))
    }
}

impl PipelineConfig {
    pub fn load(path: &Path) -> Result<Self> {
        // a video given where the pipeline file goes (`run clip.mp4`): say how to pass it
        if super::is_video_file(path) {
            return Err(Error::Config(format!(
                "{}: a video, not a pipeline file (TOML): pass videos with --input {}",
                path.display(),
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let cfg: PipelineConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        self.validate_sources()?;
        self.validate_inference()?;
        self.validate_rtsp_input_timing()?;
        self.validate_source_sizes()?;
        self.validate_credentials_and_tls()?;
        self.validate_queue_and_overlay()?;
        self.validate_output()?;
        self.validate_multi_source()?;
        self.analytics_settings().validate()?;
        self.validate_analytics_sources()?;
        self.http.validate()?;
        Ok(())
    }

    /// A zone or line for one source names a source of the file (or, with the HTTP API, any name:
    /// a stream of that name may be added later).
    fn validate_analytics_sources(&self) -> Result<()> {
        if self.http.listen.is_some() {
            return Ok(());
        }
        let names: Vec<String> = self
            .sources
            .iter()
            .map(SourceConfig::resolved_name)
            .collect();
        let zones = self.zones.iter().map(|z| ("zone", &z.name, &z.source));
        let lines = self.lines.iter().map(|l| ("line", &l.name, &l.source));
        for (what, name, source) in zones.chain(lines) {
            if let Some(s) = source.as_ref().filter(|s| !names.contains(s)) {
                return bad(
                    &format!("{what} {name:?}.source"),
                    format!("no source is named {s:?} (sources: {})", names.join(", ")),
                );
            }
        }
        Ok(())
    }

    /// At least one `[[source]]`, each with a parseable uri.
    fn validate_sources(&self) -> Result<()> {
        // with the HTTP API a run may start empty: streams are added with POST /api/streams
        if self.sources.is_empty() && self.http.listen.is_none() {
            return bad(
                "source",
                "at least one [[source]] with a uri is needed".into(),
            );
        }
        for (i, s) in self.sources.iter().enumerate() {
            s.uri
                .parse::<SourceKind>()
                .map_err(|e| Error::Config(format!("source[{i}].uri: {e}")))?;
        }
        Ok(())
    }

    /// `[inference]` and `threads`.
    fn validate_inference(&self) -> Result<()> {
        let inf = &self.inference;
        if !(0.0..=1.0).contains(&inf.score_threshold) {
            return bad(
                "inference.score_threshold",
                format!("{} is outside 0..1", inf.score_threshold),
            );
        }
        if let Some(n) = inf.max_batch.filter(|&n| n == 0 || n > 64) {
            return bad("inference.max_batch", format!("{n} is outside 1..64"));
        }
        if inf.max_wait_ms > 60_000 {
            return bad(
                "inference.max_wait_ms",
                format!("{} is over 60000", inf.max_wait_ms),
            );
        }
        if self.threads > 1024 {
            return bad("threads", format!("{} is over 1024", self.threads));
        }
        Ok(())
    }

    /// `[rtsp_input]` latency, reconnect interval and stall timeout.
    fn validate_rtsp_input_timing(&self) -> Result<()> {
        let r = &self.rtsp_input;
        if r.latency_ms > 60_000 {
            return bad(
                "rtsp_input.latency_ms",
                format!("{} is over 60000", r.latency_ms),
            );
        }
        if r.reconnect_interval_ms > 600_000 {
            return bad(
                "rtsp_input.reconnect_interval_ms",
                format!("{} is over 600000 (10 minutes)", r.reconnect_interval_ms),
            );
        }
        if r.stall_timeout_ms > 3_600_000 {
            return bad(
                "rtsp_input.stall_timeout_ms",
                format!("{} is over 3600000 (1 hour)", r.stall_timeout_ms),
            );
        }
        Ok(())
    }

    /// Each source's `max_width` / `max_height`.
    fn validate_source_sizes(&self) -> Result<()> {
        for (i, s) in self.sources.iter().enumerate() {
            for (key, v) in [("max_width", s.max_width), ("max_height", s.max_height)] {
                if !(16..=SourceConfig::MAX_SIDE).contains(&v) {
                    return bad(
                        &format!("source[{i}].{key}"),
                        format!("{v} is outside 16..{}", SourceConfig::MAX_SIDE),
                    );
                }
            }
        }
        Ok(())
    }

    /// RTSP input credentials, RTSPS certificate pair and fragment length.
    fn validate_credentials_and_tls(&self) -> Result<()> {
        let r = &self.rtsp_input;
        if r.credentials_env.is_some() && r.credentials_file.is_some() {
            return bad(
                "rtsp_input.credentials_env",
                "give credentials_env or credentials_file, not both".into(),
            );
        }
        let o = &self.output;
        if o.rtsp_tls_cert.is_some() != o.rtsp_tls_key.is_some() {
            return bad(
                "output.rtsp_tls_cert",
                "RTSPS needs both rtsp_tls_cert and rtsp_tls_key".into(),
            );
        }
        if o.fragment_ms > 60_000 {
            return bad(
                "output.fragment_ms",
                format!("{} is over 60000 (1 minute)", o.fragment_ms),
            );
        }
        Ok(())
    }

    /// `[queue]` and `[overlay]`.
    fn validate_queue_and_overlay(&self) -> Result<()> {
        if let Some(n) = self.queue.capacity.filter(|&n| n == 0 || n > 1024) {
            return bad("queue.capacity", format!("{n} is outside 1..1024"));
        }
        if self.queue.background_nice > 19 {
            return bad(
                "queue.background_nice",
                format!("{} is outside 0..19", self.queue.background_nice),
            );
        }
        let o = &self.overlay;
        if !(0.0..=1.0).contains(&o.alpha) {
            return bad("overlay.alpha", format!("{} is outside 0..1", o.alpha));
        }
        if !(4.0..=200.0).contains(&o.font_size) {
            return bad(
                "overlay.font_size",
                format!("{} is outside 4..200", o.font_size),
            );
        }
        if o.line_width > 64 {
            return bad("overlay.line_width", format!("{} is over 64", o.line_width));
        }
        Ok(())
    }

    /// `[output]`: RTSP address, file paths, video container, bitrate.
    fn validate_output(&self) -> Result<()> {
        if let Some(url) = &self.output.rtsp {
            crate::pipeline::rtsp::ServeAddress::parse(url)
                .map_err(|e| Error::Config(format!("output.rtsp: {e}")))?;
            if url.starts_with("rtsps://") && self.output.rtsp_tls_cert.is_none() {
                return bad(
                    "output.rtsp",
                    "rtsps:// needs output.rtsp_tls_cert and rtsp_tls_key".into(),
                );
            }
        }
        for (key, v) in [
            ("output.video", &self.output.video),
            ("output.jsonl", &self.output.jsonl),
            ("output.events", &self.output.events),
        ] {
            if v.as_deref().is_some_and(str::is_empty) {
                return bad(key, "is empty".into());
            }
        }
        if let Some(v) = &self.output.video {
            let lower = v.to_ascii_lowercase();
            if !(lower.ends_with(".mp4") || lower.ends_with(".mkv") || lower.ends_with(".mov")) {
                return bad(
                    "output.video",
                    format!("{v:?} must end in .mp4, .mkv or .mov"),
                );
            }
        }
        if self
            .output
            .bitrate_kbps
            .is_some_and(|b| !(64..=100_000).contains(&b))
        {
            return bad("output.bitrate_kbps", "must be within 64..100000".into());
        }
        if let Some(m) = &self.output.mqtt {
            m.validate()?;
        }
        Ok(())
    }

    /// With several sources: `{name}` in every output path, unique names.
    fn validate_multi_source(&self) -> Result<()> {
        if self.sources.len() > 1 {
            for (key, v) in [
                ("output.video", &self.output.video),
                ("output.jsonl", &self.output.jsonl),
                ("output.events", &self.output.events),
            ] {
                if v.as_deref().is_some_and(|p| !p.contains("{name}")) {
                    return bad(key, "several sources need {name} in the path".into());
                }
            }
            let mut names: Vec<String> = self
                .sources
                .iter()
                .map(SourceConfig::resolved_name)
                .collect();
            names.sort();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return bad(
                    "source.name",
                    format!(
                        "two sources are named {:?} (a file's name is its stem): source names must \
                         be unique; name them in a pipeline file ([[source]] name = \"...\")",
                        w[0]
                    ),
                );
            }
        }
        Ok(())
    }

    /// The lowest score any stage of this pipeline looks at: the output threshold, or the tracker's
    /// low threshold under it. The model skips the masks of detections under it.
    pub fn detection_floor(&self) -> f32 {
        let out = self.inference.score_threshold;
        if self.tracker.enabled {
            self.tracker
                .low_threshold
                .min(self.tracker.high_threshold)
                .min(out)
        } else {
            out
        }
    }

    /// `[tracker]`, `[analytics]`, `[[zone]]` and `[[line]]` together.
    pub fn analytics_settings(&self) -> Settings {
        Settings {
            tracker: self.tracker.clone(),
            analytics: self.analytics.clone(),
            zones: self.zones.clone(),
            lines: self.lines.clone(),
        }
    }
}

impl SourceConfig {
    pub const MAX_SIDE: u32 = 16384;

    /// A source with every optional setting at its default.
    pub fn new(uri: impl Into<String>) -> Self {
        SourceConfig {
            uri: uri.into(),
            name: None,
            max_frames: None,
            max_width: Self::default_max_width(),
            max_height: Self::default_max_height(),
        }
    }

    fn default_max_width() -> u32 {
        3840
    }

    fn default_max_height() -> u32 {
        2160
    }

    pub fn kind(&self) -> Result<SourceKind> {
        self.uri.parse()
    }

    pub fn resolved_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.kind()
                .map(|k| k.default_name())
                .unwrap_or_else(|_| "source".into())
        })
    }
}

/// A URI fit for messages and logs: any `user:password@` is replaced by `***@`.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{tail}"),
        None => uri.to_string(),
    }
}

/// Replaces `{name}` in an output path or mount.
pub fn expand(template: &str, name: &str) -> String {
    template.replace("{name}", name)
}

/// A `key: why` configuration error.
fn bad(key: &str, why: String) -> Result<()> {
    Err(Error::Config(format!("{key}: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detection_floor_is_what_the_tracker_or_the_output_still_reads() {
        let parse =
            |t: &str| PipelineConfig::parse(&format!("[[source]]\nuri = \"a.mp4\"\n{t}")).unwrap();
        assert_eq!(parse("").detection_floor(), 0.1);
        assert_eq!(
            parse("[inference]\nscore_threshold = 0.05\n").detection_floor(),
            0.05
        );
        let off = parse("[inference]\nscore_threshold = 0.7\n[tracker]\nenabled = false\n");
        assert_eq!(off.detection_floor(), 0.7);
        let low = parse("[tracker]\nlow_threshold = 0.3\n");
        assert_eq!(low.detection_floor(), 0.3);
    }

    #[test]
    fn parses_a_minimal_file_with_defaults() {
        let c = PipelineConfig::parse(
            "[[source]]\nuri = \"a.mp4\"\n[output]\njsonl = \"out/{name}.jsonl\"\n",
        )
        .unwrap();
        assert_eq!(c.sources[0].resolved_name(), "a");
        assert_eq!(c.inference.max_batch, None);
        assert_eq!(c.inference.max_batch_for(Provider::Cpu), 1);
        assert_eq!(c.inference.max_batch_for(Provider::Cuda), 4);
        assert_eq!(c.queue.capacity, None);
        assert_eq!(c.queue.capacity_for(false), 8);
        assert_eq!(c.queue.capacity_for(true), 2);
        assert_eq!(c.queue.background_nice, 19);
    }

    #[test]
    fn the_x264_preset_follows_where_inference_runs_unless_set_and_checked() {
        let parse = |t: &str| PipelineConfig::parse(&format!("[[source]]\nuri = \"a.mp4\"\n{t}"));
        let unset = parse("").unwrap().output;
        assert_eq!(unset.preset_for(true), X264Preset::Ultrafast);
        assert_eq!(unset.preset_for(false), X264Preset::Superfast);
        let c = parse("[output]\nx264_preset = \"medium\"\n").unwrap();
        assert_eq!(c.output.preset_for(true).name(), "medium");
        assert_eq!(c.output.preset_for(false).name(), "medium");
        let e = parse("[output]\nx264_preset = \"fastest\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x264_preset") && e.contains("ultrafast"), "{e}");
    }

    #[test]
    fn the_default_bitrate_follows_the_size_and_gives_ultrafast_more() {
        assert_eq!(
            default_bitrate_kbps((640, 360), X264Preset::Superfast),
            1001
        );
        assert_eq!(
            default_bitrate_kbps((640, 360), X264Preset::Ultrafast),
            1202
        );
        assert_eq!(default_bitrate_kbps((1920, 1080), X264Preset::Medium), 9015);
        assert_eq!(default_bitrate_kbps((64, 48), X264Preset::Ultrafast), 500);
        assert_eq!(
            default_bitrate_kbps((7680, 4320), X264Preset::Ultrafast),
            20_000
        );
    }

    #[test]
    fn background_nice_is_checked() {
        let parse = |t: &str| PipelineConfig::parse(&format!("[[source]]\nuri = \"a.mp4\"\n{t}"));
        assert_eq!(
            parse("[queue]\nbackground_nice = 0\n")
                .unwrap()
                .queue
                .background_nice,
            0
        );
        let e = parse("[queue]\nbackground_nice = 20\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("queue.background_nice") && e.contains("0..19"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = PipelineConfig::parse("[[source]]\nuri = \"a.mp4\"\n[inference]\nmax_bach = 2\n")
            .unwrap_err();
        assert!(e.to_string().contains("max_bach"), "{e}");
        let e = PipelineConfig::parse("[[source]]\nuri = \"a.mp4\"\n[inference]\nmax_batch = 0\n")
            .unwrap_err();
        assert!(e.to_string().contains("inference.max_batch"), "{e}");
        let e = PipelineConfig::parse("[[source]]\nuri = \"a.mp4\"\n[overlay]\nalpha = 3.0\n")
            .unwrap_err();
        assert!(e.to_string().contains("overlay.alpha"), "{e}");
        let e = PipelineConfig::parse("").unwrap_err();
        assert!(e.to_string().contains("source"), "{e}");
        let e = PipelineConfig::parse("[[source]]\nuri = \"test://x?fps=0\"\n").unwrap_err();
        assert!(e.to_string().contains("source[0].uri"), "{e}");
    }

    #[test]
    fn network_streams_are_live_and_limits_are_checked() {
        for u in [
            "http://cam.local/mjpeg",
            "https://cdn.example/live.m3u8",
            "rtsp://h:1/x",
        ] {
            let k = u.parse::<SourceKind>().unwrap();
            assert!(k.is_live() && k.is_network(), "{u}");
        }
        let f = "file:///v/a.mp4".parse::<SourceKind>().unwrap();
        assert!(!f.is_live() && !f.is_network());
        let e =
            PipelineConfig::parse("[[source]]\nuri = \"a.mp4\"\nmax_width = 100000\n").unwrap_err();
        assert!(e.to_string().contains("source[0].max_width"), "{e}");
        let c = PipelineConfig::parse("[[source]]\nuri = \"a.mp4\"\n").unwrap();
        assert_eq!(
            (c.sources[0].max_width, c.sources[0].max_height),
            (3840, 2160)
        );
        assert_eq!(c.output.fragment_ms, 1000);
        let e = PipelineConfig::parse(
            "[[source]]\nuri = \"a.mp4\"\n[output]\nrtsp = \"rtsps://127.0.0.1:0/x\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("rtsp_tls_cert"), "{e}");
    }

    #[test]
    fn mqtt_section_parses_and_errors_name_the_key() {
        let base = "[[source]]\nuri = \"a.mp4\"\n[output.mqtt]\n";
        let c = PipelineConfig::parse(&format!("{base}url = \"mqtt://127.0.0.1:1884\"\n")).unwrap();
        let m = c.output.mqtt.unwrap();
        assert_eq!((m.qos, m.frames, m.queue), (1, false, 10_000));
        assert_eq!(m.topic_prefix, "maskstream");
        assert_eq!(
            BrokerAddress::parse(&m.url).unwrap(),
            BrokerAddress {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false
            }
        );
        assert_eq!(
            BrokerAddress::parse("mqtts://broker.lan").unwrap().port,
            8883
        );
        assert_eq!(BrokerAddress::parse("mqtt://[::1]:1").unwrap().host, "::1");
        assert!(PipelineConfig::parse(
            "[[source]]\nuri = \"a.mp4\"\n[output]\nmqtt = { url = \"mqtt://h\" }\n"
        )
        .is_ok());
        for (text, key) in [
            ("url = \"mqtt://h\"\nqos = 2\n", "output.mqtt.qos"),
            ("url = \"http://h:1\"\n", "output.mqtt.url"),
            ("url = \"mqtt://h:99999\"\n", "output.mqtt.url"),
            ("url = \"mqtt://u:p@h:1\"\n", "output.mqtt.url"),
            ("url = \"\"\n", "output.mqtt.url"),
            ("qos = 1\n", "output.mqtt.url"),
            ("url = \"mqtt://h\"\nqueue = 0\n", "output.mqtt.queue"),
            (
                "url = \"mqtt://h\"\ntopic_prefix = \"a/#\"\n",
                "output.mqtt.topic_prefix",
            ),
            (
                "url = \"mqtt://h\"\ntls_ca_file = \"ca.pem\"\n",
                "output.mqtt.tls_ca_file",
            ),
            (
                "url = \"mqtt://h\"\ncredentials_env = \"A\"\ncredentials_file = \"f\"\n",
                "output.mqtt.credentials_env",
            ),
            ("url = \"mqtt://h\"\nqso = 1\n", "qso"),
        ] {
            let e = PipelineConfig::parse(&format!("{base}{text}")).unwrap_err();
            assert!(e.to_string().contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn source_kinds() {
        assert!(matches!(
            "rtsp://h:1/cam".parse::<SourceKind>().unwrap(),
            SourceKind::Rtsp(_)
        ));
        assert_eq!(
            "v4l2:///dev/video0".parse::<SourceKind>().unwrap(),
            SourceKind::V4l2("/dev/video0".into())
        );
        let t = "test://ball?width=320&height=240&frames=10"
            .parse::<SourceKind>()
            .unwrap();
        assert_eq!(
            t,
            SourceKind::Test {
                pattern: "ball".into(),
                width: 320,
                height: 240,
                fps: 30,
                frames: Some(10)
            }
        );
        assert!(t.is_live());
        assert_eq!(
            redact_uri("rtsp://bob:s3cret@10.0.0.1:554/live?x=1"),
            "rtsp://***@10.0.0.1:554/live?x=1"
        );
        assert_eq!(redact_uri("rtsp://h:1/a@b"), "rtsp://h:1/a@b");
        assert_eq!(redact_uri("/videos/a@b.mp4"), "/videos/a@b.mp4");
        assert_eq!(
            "rtsp://127.0.0.1:8554/cam1"
                .parse::<SourceKind>()
                .unwrap()
                .default_name(),
            "cam1"
        );
    }
}
