//! MQTT publishing of a run's events, counts and (optionally) frame records (`[output.mqtt]`,
//! `--mqtt`), as an [`Observer`].
//!
//! Topics (`<source>` with `/`, `+` and `#` replaced by `_`):
//! - `<prefix>/<source>/events`: each event, exactly the JSON of the events JSON Lines;
//! - `<prefix>/<source>/counts` (retained): the frame record's `analytics` (zone occupancy, line
//!   totals), whenever it changes;
//! - `<prefix>/<source>/frames`: every frame record, when `frames = true`;
//! - `<prefix>/available` (retained): `online` on each connect, `offline` on a clean shutdown and,
//!   as the last will, when the connection is lost.
//!
//! Nothing is lost while the broker is away, up to the queue's size: the observer only pushes into a
//! bounded queue (the oldest message is dropped and counted when it is full; the composite thread
//! never waits). A feeder thread hands messages to rumqttc while connected, at most [`WINDOW`] at a
//! time; the network thread drives the connection and tracks each message until the broker
//! acknowledges it (QoS 1). When the connection drops, every unacknowledged message goes back to
//! the front of the queue, in order, and is sent again after the reconnect (every ~1 s): a message
//! may then arrive twice (at least once), never not at all; the event `id` lets consumers drop
//! duplicates.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ConnectReturnCode, Connection, ConnectionError, Event, Incoming, LastWill, MqttOptions,
    Outgoing, QoS, TlsConfiguration, Transport,
};

use super::config::{BrokerAddress, MqttConfig};
use super::observe::Observer;
use crate::analytics::Event as AnalyticsEvent;
use crate::error::{Error, Result};
use crate::output::FrameRecord;

/// Messages handed to the client and not yet acknowledged, at most (below rumqttc's in-flight limit
/// of 100, so packet ids never collide).
pub const WINDOW: usize = 50;
/// How long `close` waits, at most, for queued messages to be acknowledged.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long `start` waits for the broker's first answer.
const STARTUP_WAIT: Duration = Duration::from_secs(5);
/// Pause between connection attempts.
const RETRY: Duration = Duration::from_secs(1);
/// The largest message sent (a frame record with many masks); larger ones are dropped and counted.
const MAX_PACKET: usize = MqttConfig::MAX_PACKET;

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// A counts message: a newer one for the same topic replaces it while it waits.
    pub coalesce: bool,
    /// Connections that dropped while it was the oldest message not acknowledged.
    pub drops: u8,
}

/// A message the connection dropped on this many times in a row is given up: a broker that
/// disconnects on it (over its packet size limit, a topic it forbids) would get it again after
/// every reconnect, and nothing queued behind it would go out.
pub const DROPS_TO_GIVE_UP: u8 = 3;

/// The bounded buffer: when full, the oldest message makes room and is counted as dropped.
#[derive(Debug, Default)]
pub struct BoundedQueue {
    items: VecDeque<Message>,
    capacity: usize,
    /// Payload bytes queued, and the most allowed.
    bytes: usize,
    max_bytes: usize,
    dropped: u64,
}

impl BoundedQueue {
    pub fn new(capacity: usize) -> Self {
        Self::with_bytes(capacity, usize::MAX)
    }

    /// At most `capacity` messages and `max_bytes` of payload (the oldest go first; the newest
    /// message stays even when it alone is larger).
    pub fn with_bytes(capacity: usize, max_bytes: usize) -> Self {
        BoundedQueue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            bytes: 0,
            max_bytes,
            dropped: 0,
        }
    }

    /// Payload bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends `m`, or replaces a waiting message of the same topic when both coalesce; drops the
    /// oldest when full.
    pub fn push(&mut self, m: Message) {
        if m.coalesce {
            if let Some(old) = self
                .items
                .iter_mut()
                .rev()
                .find(|o| o.coalesce && o.topic == m.topic)
            {
                self.bytes = self.bytes - old.payload.len() + m.payload.len();
                *old = m;
                self.trim();
                return;
            }
        }
        self.bytes += m.payload.len();
        self.items.push_back(m);
        self.trim();
    }

    /// Puts messages that were sent but not acknowledged back at the front, in their order.
    pub fn requeue(&mut self, front: impl DoubleEndedIterator<Item = Message>) {
        for m in front.rev() {
            self.bytes += m.payload.len();
            self.items.push_front(m);
        }
        self.trim();
    }

    pub fn pop(&mut self) -> Option<Message> {
        let m = self.items.pop_front()?;
        self.bytes -= m.payload.len();
        Some(m)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Messages dropped so far to make room.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn trim(&mut self) {
        while self.items.len() > self.capacity
            || (self.bytes > self.max_bytes && self.items.len() > 1)
        {
            if let Some(m) = self.items.pop_front() {
                self.bytes -= m.payload.len();
            }
            self.dropped += 1;
        }
    }
}

/// How the first connection attempt went.
#[derive(Debug, Clone)]
enum First {
    Connected,
    /// The broker answered and refused, or TLS failed: the run cannot work as configured.
    Fatal(String),
    /// Nobody answered (yet): messages queue until the broker is back.
    Unreachable(String),
}

struct State {
    queue: BoundedQueue,
    /// Handed to rumqttc, not yet written (rumqttc reports each write in this order).
    submitted: VecDeque<Message>,
    /// Written with this packet id, waiting for the broker's acknowledgement.
    inflight: VecDeque<(u16, Message)>,
    connected: bool,
    ever_connected: bool,
    first: Option<First>,
    /// `close` began: the threads end once the connection is closed (or cannot be).
    closing: bool,
    /// The network thread ended.
    finished: bool,
    /// When the connection was lost (for the "reconnected after" message).
    lost_at: Option<Instant>,
}

impl State {
    fn unacked(&self) -> usize {
        self.queue.len() + self.submitted.len() + self.inflight.len()
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    delivered: AtomicU64,
    /// Messages dropped before queuing: too large, or a topic the client refuses.
    oversized: AtomicU64,
    /// `<prefix>/available`.
    available: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // a panic on another thread must not take the run down with it
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Publishes to one MQTT broker; see the module documentation.
pub struct MqttPublisher {
    shared: Arc<Shared>,
    client: Client,
    /// The broker's URL, for messages.
    url: String,
    prefix: String,
    frames: bool,
    /// Larger packets are dropped (`output.mqtt.max_packet_bytes`).
    max_packet: usize,
    /// Last counts published (queued) per source, to publish only changes.
    counts: Mutex<HashMap<String, Vec<u8>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// What `close` could not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReport {
    pub delivered: u64,
    pub undelivered: usize,
    pub dropped: u64,
}

impl MqttPublisher {
    /// Connects (credentials, TLS) and starts publishing. A broker that refuses the connection (bad
    /// credentials, not authorized) or a TLS failure is an error naming the broker; an unreachable
    /// broker is a warning, and messages queue until it answers.
    pub fn start(cfg: &MqttConfig) -> Result<Arc<Self>> {
        cfg.validate()?;
        let addr = BrokerAddress::parse(&cfg.url)
            .map_err(|why| Error::Config(format!("output.mqtt.url: {why}")))?;
        let url = cfg.url.clone();
        let prefix = cfg.topic_prefix.trim_end_matches('/').to_string();
        let qos = if cfg.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let client_id = cfg.client_id.clone().unwrap_or_else(default_client_id);
        let mut options = MqttOptions::new(client_id, addr.host.clone(), addr.port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_last_will(LastWill::new(
                available_topic(&prefix),
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        let credentials = super::credentials_from(
            cfg.credentials_env.as_deref(),
            cfg.credentials_file.as_deref(),
            "output.mqtt",
        )?;
        if let Some(c) = credentials {
            options.set_credentials(c.user, c.password);
        }
        if addr.tls {
            let tls = tls_config(cfg.tls_ca_file.as_deref())?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        }
        let (client, connection) = Client::new(options, 2 * WINDOW + 8);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: BoundedQueue::with_bytes(cfg.queue, cfg.queue_mb << 20),
                submitted: VecDeque::new(),
                inflight: VecDeque::new(),
                connected: false,
                ever_connected: false,
                first: None,
                closing: false,
                finished: false,
                lost_at: None,
            }),
            changed: Condvar::new(),
            delivered: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            available: available_topic(&prefix),
        });
        let publisher = Arc::new(MqttPublisher {
            shared: shared.clone(),
            client: client.clone(),
            url: url.clone(),
            prefix,
            frames: cfg.frames,
            max_packet: cfg.max_packet_bytes.unwrap_or(MAX_PACKET),
            counts: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
        });
        let net = {
            let (shared, url) = (shared.clone(), url.clone());
            std::thread::Builder::new()
                .name("mqtt-net".into())
                .spawn(move || network_loop(connection, &shared, qos, &url))
                .map_err(|e| Error::Pipeline(format!("starting the MQTT thread: {e}")))?
        };
        let feeder = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("mqtt-feed".into())
                .spawn(move || feed_loop(&client, &shared, qos))
                .map_err(|e| Error::Pipeline(format!("starting the MQTT thread: {e}")))?
        };
        if let Ok(mut t) = publisher.threads.lock() {
            t.extend([net, feeder]);
        }
        match publisher.wait_first() {
            First::Connected => {
                tracing::info!(broker = %url, "MQTT: connected");
                Ok(publisher)
            }
            First::Fatal(why) => {
                publisher.abort();
                Err(Error::Pipeline(format!("MQTT broker {url}: {why}")))
            }
            First::Unreachable(why) => {
                tracing::warn!(
                    broker = %url,
                    "MQTT broker is unreachable ({why}); messages queue (up to {}) and are sent \
                     once it answers, retrying every {} s",
                    cfg.queue,
                    RETRY.as_secs()
                );
                Ok(publisher)
            }
        }
    }

    /// The first connection attempt's outcome (or unreachable after `STARTUP_WAIT`).
    fn wait_first(&self) -> First {
        let deadline = Instant::now() + STARTUP_WAIT;
        let mut st = self.shared.lock();
        loop {
            if let Some(f) = &st.first {
                return f.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return First::Unreachable(format!("no answer within {STARTUP_WAIT:?}"));
            }
            st = match self.shared.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The broker's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Messages not yet acknowledged by the broker: waiting in the buffer or in flight.
    pub fn queued(&self) -> usize {
        self.shared.lock().unacked()
    }

    /// Messages dropped so far: the oldest when the buffer was full, and any over the size limit
    /// (or with a topic the broker would refuse).
    pub fn dropped(&self) -> u64 {
        self.shared.lock().queue.dropped() + self.shared.oversized.load(Ordering::Relaxed)
    }

    /// Messages the broker acknowledged (QoS 1) or that were written to it (QoS 0).
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// Whether the connection to the broker is up.
    pub fn connected(&self) -> bool {
        self.shared.lock().connected
    }

    /// Queues one message (never waits for the network).
    pub fn publish(&self, topic: String, payload: Vec<u8>, retain: bool, coalesce: bool) {
        // a PUBLISH packet: up to 5 bytes of fixed header, 2 of topic length, 2 of packet id
        if payload.len() + topic.len() + 9 > self.max_packet {
            let n = self.shared.oversized.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(
                    topic,
                    bytes = payload.len(),
                    max_packet_bytes = self.max_packet,
                    "MQTT: message too large, dropped ({} so far)",
                    n + 1
                );
            }
            return;
        }
        // the client refuses such topics: a message stuck at the queue's head would block the rest
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            self.shared.oversized.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic, "MQTT: not a valid topic name, message dropped");
            return;
        }
        let mut st = self.shared.lock();
        let before = st.queue.dropped();
        st.queue.push(Message {
            topic,
            payload,
            retain,
            coalesce,
            drops: 0,
        });
        let dropped = st.queue.dropped();
        drop(st);
        self.shared.changed.notify_all();
        if dropped > before && (before == 0 || dropped / 1000 > before / 1000) {
            tracing::warn!(
                broker = %self.url,
                dropped,
                "MQTT: the buffer is full; the oldest messages are being dropped"
            );
        }
    }

    /// Waits up to `wait` for every queued message to be acknowledged, publishes `offline` (retained)
    /// and disconnects. What could not be delivered is reported.
    pub fn close(&self, wait: Duration) -> CloseReport {
        self.publish(
            available_topic(&self.prefix),
            b"offline".to_vec(),
            true,
            false,
        );
        let deadline = Instant::now() + wait;
        let mut st = self.shared.lock();
        while st.unacked() > 0 && !st.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = match self.shared.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        st.closing = true;
        let undelivered = st.unacked();
        let connected = st.connected;
        drop(st);
        self.shared.changed.notify_all();
        if connected {
            let _ = self.client.try_disconnect();
        }
        self.join(Duration::from_secs(2));
        let report = CloseReport {
            delivered: self.delivered(),
            undelivered,
            dropped: self.dropped(),
        };
        if undelivered > 0 || report.dropped > 0 {
            tracing::warn!(
                broker = %self.url,
                "MQTT: {undelivered} messages not delivered, {} dropped (buffer full)",
                report.dropped
            );
        }
        report
    }

    /// Ends the threads at once (a fatal start).
    fn abort(&self) {
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        let _ = self.client.try_disconnect();
        self.join(Duration::from_secs(2));
    }

    /// Joins the threads once the network thread has ended, waiting at most `limit` for it (a
    /// connection attempt may hang until its timeout; the process does not wait for it).
    fn join(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut st = self.shared.lock();
        while !st.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = match self.shared.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        drop(st);
        let threads = match self.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        for t in threads {
            let _ = t.join();
        }
    }

    fn topic(&self, source: &str, leaf: &str) -> String {
        format!("{}/{}/{leaf}", self.prefix, topic_level(source))
    }
}

impl Observer for MqttPublisher {
    fn event(&self, source: &str, event: &AnalyticsEvent) {
        match serde_json::to_vec(event) {
            Ok(payload) => self.publish(self.topic(source, "events"), payload, false, false),
            Err(e) => tracing::warn!(source, error = %e, "MQTT: cannot serialize an event"),
        }
    }

    fn frame(&self, source: &str, record: &FrameRecord) {
        if let Some(analytics) = &record.analytics {
            if let Ok(payload) = serde_json::to_vec(analytics) {
                let changed = match self.counts.lock() {
                    Ok(mut last) => {
                        if last.get(source) == Some(&payload) {
                            false
                        } else {
                            last.insert(source.to_string(), payload.clone());
                            true
                        }
                    }
                    Err(_) => true,
                };
                if changed {
                    self.publish(self.topic(source, "counts"), payload, true, true);
                }
            }
        }
        if self.frames {
            match serde_json::to_vec(record) {
                Ok(payload) => self.publish(self.topic(source, "frames"), payload, false, false),
                Err(e) => tracing::warn!(source, error = %e, "MQTT: cannot serialize a frame"),
            }
        }
    }
}

/// Dropped without `close`: the threads end and the connection closes without a DISCONNECT, so the
/// broker publishes the last will (`offline`).
impl Drop for MqttPublisher {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
    }
}

/// `<prefix>/available`.
pub fn available_topic(prefix: &str) -> String {
    format!("{prefix}/available")
}

/// A source name as one topic level: `/`, `+`, `#` (and NUL) become `_`.
pub fn topic_level(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| match c {
            '/' | '+' | '#' | '\0' => '_',
            c => c,
        })
        .collect();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

/// `maskstream-<pid>-<host>`, at most 23 characters (what every MQTT 3.1.1 broker accepts).
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let mut id = format!("maskstream-{}-{host}", std::process::id());
    id.truncate(23);
    id.trim_end_matches('-').to_string()
}

/// Rustls (ring) trusting `ca` (PEM), or the system's roots.
fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    Error::Config(format!("output.mqtt.tls_ca_file: {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::Config(format!("output.mqtt.tls_ca_file: {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(Error::Config(format!(
                    "output.mqtt.tls_ca_file: {}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(Error::Config(
                    "output.mqtt: mqtts:// without tls_ca_file needs the system's CA certificates \
                     (none found)"
                        .into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Pipeline(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Hands queued messages to the client while connected, keeping at most `WINDOW` unacknowledged.
fn feed_loop(client: &Client, shared: &Shared, qos: QoS) {
    let mut st = shared.lock();
    loop {
        if st.closing || st.finished {
            return;
        }
        while st.connected && st.submitted.len() + st.inflight.len() < WINDOW {
            let Some(m) = st.queue.pop() else {
                break;
            };
            match client.try_publish(m.topic.clone(), qos, m.retain, m.payload.clone()) {
                Ok(()) => st.submitted.push_back(m),
                Err(e) => {
                    // the request channel is full or closed: try again on the next change
                    tracing::debug!(error = %e, "MQTT: request not taken");
                    st.queue.requeue(std::iter::once(m));
                    break;
                }
            }
        }
        st = match shared.changed.wait_timeout(st, Duration::from_millis(200)) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
}

/// Drives the connection: connects (and reconnects every `RETRY`), tracks writes and
/// acknowledgements, and puts unacknowledged messages back in the queue when the connection drops.
fn network_loop(mut connection: Connection, shared: &Shared, qos: QoS, url: &str) {
    loop {
        let next = match connection.recv() {
            Ok(n) => n,
            // every client handle is gone
            Err(_) => break,
        };
        match next {
            Ok(event) => {
                let mut st = shared.lock();
                let done = handle(event, &mut st, shared, qos, url);
                drop(st);
                shared.changed.notify_all();
                if done {
                    break;
                }
            }
            Err(e) => {
                let mut st = shared.lock();
                // what rumqttc read before the error (acknowledgements) still counts
                let buffered: Vec<Event> = connection.eventloop.state.events.drain(..).collect();
                for event in buffered {
                    handle(event, &mut st, shared, qos, url);
                }
                // unacknowledged messages go back to the queue: rumqttc must not send its copies
                connection.eventloop.clean();
                connection.eventloop.pending.clear();
                connection.eventloop.state.events.clear();
                if requeue_unacked(&mut st) {
                    shared.oversized.fetch_add(1, Ordering::Relaxed);
                }
                let why = describe(&e);
                if st.connected {
                    tracing::warn!(
                        broker = %url,
                        queued = st.unacked(),
                        "MQTT: connection lost ({why}); queuing and reconnecting"
                    );
                    st.lost_at = Some(Instant::now());
                }
                st.connected = false;
                if st.first.is_none() {
                    st.lost_at = Some(Instant::now());
                    st.first = Some(if is_fatal(&e) {
                        First::Fatal(why)
                    } else {
                        First::Unreachable(why)
                    });
                } else if st.ever_connected && is_fatal(&e) {
                    tracing::warn!(broker = %url, "MQTT: reconnecting failed: {why}");
                }
                let fatal_start = !st.ever_connected && is_fatal(&e);
                shared.changed.notify_all();
                if st.closing || fatal_start {
                    break;
                }
                // wait before the next attempt (rumqttc reconnects on the next recv), unless closing
                let until = Instant::now() + RETRY;
                while !st.closing {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    st = match shared.changed.wait_timeout(st, left) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
                if st.closing {
                    break;
                }
            }
        }
    }
    let mut st = shared.lock();
    st.finished = true;
    st.connected = false;
    drop(st);
    shared.changed.notify_all();
}

/// After a lost connection: what was written but not acknowledged, then what was handed over but
/// not written, back to the front of the queue in their order.
/// The oldest of them was the one the broker stopped at (it acknowledges in order): after
/// `DROPS_TO_GIVE_UP` drops in a row on one message, that message is given up (true).
fn requeue_unacked(st: &mut State) -> bool {
    let inflight: Vec<Message> = st.inflight.drain(..).map(|(_, m)| m).collect();
    let submitted: Vec<Message> = st.submitted.drain(..).collect();
    let mut all: VecDeque<Message> = inflight.into_iter().chain(submitted).collect();
    let mut gave_up = false;
    if let Some(first) = all.front_mut() {
        first.drops = first.drops.saturating_add(1);
        if first.drops >= DROPS_TO_GIVE_UP {
            if let Some(m) = all.pop_front() {
                tracing::warn!(
                    topic = %m.topic,
                    bytes = m.payload.len(),
                    "MQTT: the connection dropped {DROPS_TO_GIVE_UP} times on this message; \
                     given up (the broker's packet size limit or its permissions?)"
                );
                gave_up = true;
            }
        }
    }
    st.queue.requeue(all.into_iter());
    gave_up
}

/// One event of the connection; true when the loop is done (our disconnect went out).
fn handle(event: Event, st: &mut State, shared: &Shared, qos: QoS, url: &str) -> bool {
    match event {
        Event::Incoming(Incoming::ConnAck(_)) => {
            if let Some(t) = st.lost_at.take() {
                tracing::info!(
                    broker = %url,
                    queued = st.unacked(),
                    "MQTT: {} after {:.1} s",
                    if st.ever_connected { "reconnected" } else { "connected" },
                    t.elapsed().as_secs_f64()
                );
            }
            st.connected = true;
            st.ever_connected = true;
            if st.first.is_none() {
                st.first = Some(First::Connected);
            }
            // retained `online` first (after a lost connection the last will said `offline`)
            if !st.closing {
                st.queue.requeue(std::iter::once(Message {
                    topic: shared.available.clone(),
                    payload: b"online".to_vec(),
                    retain: true,
                    coalesce: false,
                    drops: 0,
                }));
            }
            false
        }
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            if let Some(m) = st.submitted.pop_front() {
                if qos == QoS::AtMostOnce {
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                } else {
                    st.inflight.push_back((pkid, m));
                }
            }
            false
        }
        Event::Incoming(Incoming::PubAck(ack)) => {
            if let Some(i) = st.inflight.iter().position(|(p, _)| *p == ack.pkid) {
                st.inflight.remove(i);
                shared.delivered.fetch_add(1, Ordering::Relaxed);
            }
            false
        }
        Event::Outgoing(Outgoing::Disconnect) => st.closing,
        _ => false,
    }
}

/// The broker answered and said no, or TLS failed: retrying will not help.
fn is_fatal(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::ConnectionRefused(_) | ConnectionError::Tls(_)
    )
}

/// A connection error in words.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword => {
                    "bad user name or password (check output.mqtt credentials_env / credentials_file)"
                }
                ConnectReturnCode::NotAuthorized => {
                    "not authorized (the credentials were refused or are missing, or the broker's \
                     access rules deny this client)"
                }
                ConnectReturnCode::BadClientId => "the client id was rejected (output.mqtt.client_id)",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 is not supported",
                ConnectReturnCode::Success => "no reason given",
            };
            format!("the broker refused the connection: {why}")
        }
        ConnectionError::Tls(t) => format!("TLS failed: {t}"),
        ConnectionError::Io(io) => format!("{io}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, n: u8, coalesce: bool) -> Message {
        Message {
            topic: topic.into(),
            payload: vec![n],
            retain: coalesce,
            coalesce,
            drops: 0,
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let mut q = BoundedQueue::new(3);
        for n in 0..5 {
            q.push(msg("e", n, false));
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 2);
        let left: Vec<u8> = std::iter::from_fn(|| q.pop())
            .map(|m| m.payload[0])
            .collect();
        assert_eq!(left, [2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn the_queue_holds_a_bounded_number_of_bytes() {
        let big = |n: u8| Message {
            payload: vec![n; 1000],
            ..msg("p/c/frames", n, false)
        };
        let mut q = BoundedQueue::with_bytes(100, 2500);
        for n in 0..5 {
            q.push(big(n));
        }
        assert_eq!((q.len(), q.bytes(), q.dropped()), (2, 2000, 3));
        q.requeue(std::iter::once(big(9)));
        assert_eq!((q.len(), q.bytes(), q.dropped()), (2, 2000, 4));
        // a counts message replaced by a larger one is counted at its new size
        q.push(Message {
            payload: vec![1; 10],
            ..msg("p/c/counts", 1, true)
        });
        q.push(Message {
            payload: vec![2; 400],
            ..msg("p/c/counts", 2, true)
        });
        assert_eq!((q.len(), q.bytes()), (3, 2400));
        while q.pop().is_some() {}
        assert_eq!(q.bytes(), 0);
        // one message larger than the whole budget still goes out
        let mut q = BoundedQueue::with_bytes(10, 10);
        q.push(big(1));
        assert_eq!((q.len(), q.dropped()), (1, 0));
    }

    #[test]
    fn requeued_messages_go_first_in_order_and_overflow_drops_the_oldest() {
        let mut q = BoundedQueue::new(4);
        q.push(msg("e", 10, false));
        q.push(msg("e", 11, false));
        q.requeue(vec![msg("e", 1, false), msg("e", 2, false), msg("e", 3, false)].into_iter());
        assert_eq!(q.dropped(), 1);
        let order: Vec<u8> = std::iter::from_fn(|| q.pop())
            .map(|m| m.payload[0])
            .collect();
        assert_eq!(order, [2, 3, 10, 11]);
    }

    #[test]
    fn counts_waiting_for_the_broker_keep_only_the_latest() {
        let mut q = BoundedQueue::new(10);
        q.push(msg("p/a/counts", 1, true));
        q.push(msg("p/a/events", 2, false));
        q.push(msg("p/b/counts", 3, true));
        q.push(msg("p/a/counts", 4, true));
        let got: Vec<(String, u8)> = std::iter::from_fn(|| q.pop())
            .map(|m| (m.topic, m.payload[0]))
            .collect();
        assert_eq!(
            got,
            [
                ("p/a/counts".to_string(), 4),
                ("p/a/events".to_string(), 2),
                ("p/b/counts".to_string(), 3)
            ]
        );
        assert_eq!(q.dropped(), 0);
    }

    #[test]
    fn unacknowledged_messages_go_back_in_order_after_a_lost_connection() {
        let shared = Shared {
            state: Mutex::new(State {
                queue: BoundedQueue::new(100),
                submitted: VecDeque::new(),
                inflight: VecDeque::new(),
                connected: true,
                ever_connected: true,
                first: Some(First::Connected),
                closing: false,
                finished: false,
                lost_at: None,
            }),
            changed: Condvar::new(),
            delivered: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            available: "p/available".into(),
        };
        let mut st = shared.lock();
        for n in 0..5 {
            st.submitted.push_back(msg("p/c/events", n, false));
        }
        st.queue.push(msg("p/c/events", 5, false));
        // messages 0, 1, 2 written with packet ids 1, 2, 3; only 1 acknowledged; 3 and 4 handed
        // over but not written
        for pkid in 1..=3 {
            handle(
                Event::Outgoing(Outgoing::Publish(pkid)),
                &mut st,
                &shared,
                QoS::AtLeastOnce,
                "u",
            );
        }
        let ack = Event::Incoming(Incoming::PubAck(rumqttc::PubAck::new(2)));
        handle(ack, &mut st, &shared, QoS::AtLeastOnce, "u");
        assert_eq!(shared.delivered.load(Ordering::Relaxed), 1);
        assert_eq!(st.unacked(), 5);
        requeue_unacked(&mut st);
        let order: Vec<u8> = std::iter::from_fn(|| st.queue.pop())
            .map(|m| m.payload[0])
            .collect();
        assert_eq!(order, [0, 2, 3, 4, 5]);
        // a message the connection drops on again and again is given up after the third time,
        // and what was queued behind it goes on
        for round in 1..=DROPS_TO_GIVE_UP {
            if st.queue.is_empty() {
                st.queue.push(msg("p/c/frames", 9, false));
                st.queue.push(msg("p/c/events", 10, false));
            }
            let m = st.queue.pop().unwrap();
            assert_eq!(m.payload[0], 9);
            st.inflight.push_back((1, m));
            let gave_up = requeue_unacked(&mut st);
            assert_eq!(gave_up, round == DROPS_TO_GIVE_UP, "round {round}");
        }
        let left: Vec<u8> = std::iter::from_fn(|| st.queue.pop())
            .map(|m| m.payload[0])
            .collect();
        assert_eq!(left, [10]);
        // a reconnect announces `online` first
        handle(
            Event::Incoming(Incoming::ConnAck(rumqttc::ConnAck::new(
                ConnectReturnCode::Success,
                false,
            ))),
            &mut st,
            &shared,
            QoS::AtLeastOnce,
            "u",
        );
        let first = st.queue.pop().unwrap();
        assert_eq!(
            (first.topic.as_str(), first.payload.as_slice(), first.retain),
            ("p/available", &b"online"[..], true)
        );
    }

    #[test]
    fn topic_levels_and_client_ids() {
        assert_eq!(topic_level("cam/1+#"), "cam_1__");
        assert_eq!(topic_level(""), "_");
        let id = default_client_id();
        assert!(id.starts_with("maskstream-") && id.len() <= 23, "{id}");
    }
}
