//! The tap thread and the media socket.
//!
//! One plain thread serves the media socket (Unix stream, binary frames from
//! [`mediagw_shared::media`]): it drains every tapped endpoint's frame ring
//! every few milliseconds and copies each frame to each subscriber, and it
//! takes frames to play and pushes them onto the endpoint's play ring.
//!
//! Nothing allocates per frame: each connection owns a fixed output buffer;
//! a frame that does not fit (the subscriber is slow) is dropped for that
//! subscriber alone, counted, and reported to it with a `Dropped` message.
//! Workers never wait for the tap: a full tap ring drops at the worker, a
//! full play ring makes the tap stop reading that connection (backpressure).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use mediagw_shared::ids::EndpointId;
use mediagw_shared::media::{
    Ack, Dropped, ErrorReply, Frame as MediaFrame, FrameFlags as MediaFlags, MAX_MESSAGE_LEN,
    MediaDecoder, MediaErrorCode, MediaFormat, MediaMessage, Samples,
};

use crate::endpoint::EndpointShared;
use crate::jitter::{Frame, FrameFlags, MAX_FRAME_SAMPLES};
use crate::ring::{FrameConsumer, FrameProducer};
use crate::units::ClockRate;

/// How often the tap runs.
const TAP_TICK: Duration = Duration::from_millis(5);
/// Output buffer per connection: about 1 s of 16 kHz frames.
const OUT_CAPACITY: usize = 64 * 1024;
/// Subscribers one endpoint may have.
const MAX_SUBSCRIBERS: usize = 8;

/// What the tap needs to know about an endpoint.
#[derive(Debug)]
pub struct TapEndpoint {
    /// The endpoint.
    pub id: EndpointId,
    /// Its frames, from the worker.
    pub frames: FrameConsumer,
    /// Frames to play, to the worker.
    pub play: FrameProducer,
    /// Flags shared with the worker.
    pub shared: Arc<EndpointShared>,
    /// The codec's sample rate.
    pub rate: ClockRate,
}

/// A change to the set of endpoints, from the control thread.
#[derive(Debug)]
pub enum TapCommand {
    /// A new endpoint.
    Add(Box<TapEndpoint>),
    /// An endpoint is gone.
    Remove(EndpointId),
}

/// Counters the tap publishes.
#[derive(Debug, Default)]
pub struct TapMetrics {
    /// Media socket connections open.
    pub connections: AtomicU64,
    /// Frames written to subscribers.
    pub frames_out: AtomicU64,
    /// Frames dropped for slow subscribers.
    pub frames_dropped: AtomicU64,
    /// Frames taken to play.
    pub frames_in: AtomicU64,
    /// Malformed media messages.
    pub malformed: AtomicU64,
}

/// The control thread's handle on the tap thread.
#[derive(Debug)]
pub struct Tap {
    /// Endpoint changes.
    pub commands: Arc<ArrayQueue<TapCommand>>,
    /// Counters.
    pub metrics: Arc<TapMetrics>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tap {
    /// Starts the tap thread on a bound listener.
    pub fn spawn(listener: UnixListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let commands = Arc::new(ArrayQueue::new(65_536));
        let metrics = Arc::new(TapMetrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = TapState {
            listener,
            commands: commands.clone(),
            metrics: metrics.clone(),
            endpoints: HashMap::new(),
            conns: Vec::new(),
            next_conn: 0,
        };
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mediagw-tap".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    state.turn();
                    std::thread::sleep(TAP_TICK);
                }
            })?;
        Ok(Self {
            commands,
            metrics,
            stop,
            thread: Some(thread),
        })
    }

    /// Queues an endpoint change; false if the queue is full.
    pub fn send(&self, cmd: TapCommand) -> bool {
        self.commands.push(cmd).is_ok()
    }

    /// Stops the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Queues a frame to play; onto an empty ring, tells the worker (which may
/// have stopped pacing on an underrun and no longer looks at the ring).
fn push_play(ep: &mut TapEndpoint, frame: &Frame) -> Result<(), crate::ring::Overflow> {
    let was_empty = ep.play.is_empty();
    ep.play.push(frame)?;
    if was_empty {
        ep.shared.notify_play();
    }
    Ok(())
}

struct TapEntry {
    ep: TapEndpoint,
    subscribers: Vec<u64>,
}

struct Conn {
    id: u64,
    stream: UnixStream,
    decoder: MediaDecoder,
    out: Vec<u8>,
    /// A Play message waiting for room in its endpoint's play ring.
    stash: Option<(EndpointId, Frame)>,
    /// Frames dropped per endpoint since the last `Dropped` we sent.
    dropped: Vec<(EndpointId, u64)>,
    closed: bool,
}

struct TapState {
    listener: UnixListener,
    commands: Arc<ArrayQueue<TapCommand>>,
    metrics: Arc<TapMetrics>,
    endpoints: HashMap<EndpointId, TapEntry>,
    conns: Vec<Conn>,
    next_conn: u64,
}

impl TapState {
    fn turn(&mut self) {
        self.apply_commands();
        self.accept();
        for i in 0..self.conns.len() {
            self.read_conn(i);
        }
        self.fan_out();
        for c in &mut self.conns {
            flush(c);
        }
        let before = self.conns.len();
        let closed: Vec<u64> = self
            .conns
            .iter()
            .filter(|c| c.closed)
            .map(|c| c.id)
            .collect();
        if !closed.is_empty() {
            self.conns.retain(|c| !c.closed);
            for e in self.endpoints.values_mut() {
                e.subscribers.retain(|s| !closed.contains(s));
                e.ep.shared.set_subscribers(e.subscribers.len());
            }
        }
        if before != self.conns.len() {
            self.metrics
                .connections
                .store(self.conns.len() as u64, Ordering::Relaxed);
        }
    }

    fn apply_commands(&mut self) {
        while let Some(cmd) = self.commands.pop() {
            match cmd {
                TapCommand::Add(ep) => {
                    self.endpoints.insert(
                        ep.id,
                        TapEntry {
                            ep: *ep,
                            subscribers: Vec::new(),
                        },
                    );
                }
                TapCommand::Remove(id) => {
                    self.endpoints.remove(&id);
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.next_conn += 1;
                    self.conns.push(Conn {
                        id: self.next_conn,
                        stream,
                        decoder: MediaDecoder::new(),
                        out: Vec::with_capacity(OUT_CAPACITY),
                        stash: None,
                        dropped: Vec::new(),
                        closed: false,
                    });
                    self.metrics
                        .connections
                        .store(self.conns.len() as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            }
        }
    }

    fn read_conn(&mut self, i: usize) {
        let mut buf = [0u8; 16 * 1024];
        // A stashed play frame first: no further input until it is placed.
        if let Some((id, frame)) = self.conns[i].stash.take()
            && let Some(e) = self.endpoints.get_mut(&id)
        {
            if push_play(&mut e.ep, &frame).is_err() {
                self.conns[i].stash = Some((id, frame));
                return;
            }
            self.metrics.frames_in.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            if self.conns[i].stash.is_some() || self.conns[i].closed {
                return;
            }
            self.handle_messages(i);
            if self.conns[i].stash.is_some() {
                return;
            }
            let c = &mut self.conns[i];
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    c.closed = true;
                    return;
                }
                Ok(n) => c.decoder.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.closed = true;
                    return;
                }
            }
        }
    }

    fn handle_messages(&mut self, i: usize) {
        let Self {
            conns,
            endpoints,
            metrics,
            ..
        } = self;
        let c = &mut conns[i];
        let conn_id = c.id;
        loop {
            let reply: Option<MediaMessage<'static>>;
            {
                let Some(msg) = c.decoder.next_message() else {
                    return;
                };
                reply = match msg {
                    Err(_) => {
                        metrics.malformed.fetch_add(1, Ordering::Relaxed);
                        Some(error(EndpointId(0), 0, MediaErrorCode::MALFORMED))
                    }
                    Ok(MediaMessage::Subscribe(s)) => {
                        let kind = 0x01;
                        match endpoints.get_mut(&s.endpoint) {
                            None => Some(error(s.endpoint, kind, MediaErrorCode::UNKNOWN_ENDPOINT)),
                            Some(_) if s.format != MediaFormat::PCM16 => {
                                Some(error(s.endpoint, kind, MediaErrorCode::UNSUPPORTED_FORMAT))
                            }
                            Some(e) if e.subscribers.contains(&conn_id) => {
                                Some(ack(s.endpoint, kind))
                            }
                            Some(e) if e.subscribers.len() >= MAX_SUBSCRIBERS => Some(error(
                                s.endpoint,
                                kind,
                                MediaErrorCode::TOO_MANY_SUBSCRIBERS,
                            )),
                            Some(e) => {
                                e.subscribers.push(conn_id);
                                e.ep.shared.set_subscribers(e.subscribers.len());
                                Some(ack(s.endpoint, kind))
                            }
                        }
                    }
                    Ok(MediaMessage::Unsubscribe(u)) => match endpoints.get_mut(&u.endpoint) {
                        Some(e) if e.subscribers.contains(&conn_id) => {
                            e.subscribers.retain(|s| *s != conn_id);
                            e.ep.shared.set_subscribers(e.subscribers.len());
                            Some(ack(u.endpoint, 0x02))
                        }
                        Some(_) => Some(error(u.endpoint, 0x02, MediaErrorCode::NOT_SUBSCRIBED)),
                        None => Some(error(u.endpoint, 0x02, MediaErrorCode::UNKNOWN_ENDPOINT)),
                    },
                    Ok(MediaMessage::Play(p)) => match endpoints.get_mut(&p.endpoint) {
                        None => Some(error(p.endpoint, 0x03, MediaErrorCode::UNKNOWN_ENDPOINT)),
                        Some(e) if p.sample_rate != e.ep.rate => Some(error(
                            p.endpoint,
                            0x03,
                            MediaErrorCode::SAMPLE_RATE_MISMATCH,
                        )),
                        Some(e) => {
                            let mut frame = Frame::default();
                            let n = p.samples.copy_to(&mut frame.samples[..MAX_FRAME_SAMPLES]);
                            frame.len = n as u16;
                            frame.seq = p.seq;
                            if push_play(&mut e.ep, &frame).is_err() {
                                c.stash = Some((p.endpoint, frame));
                                return;
                            }
                            metrics.frames_in.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    },
                    Ok(MediaMessage::Unknown(u)) => {
                        Some(error(EndpointId(0), u.kind, MediaErrorCode::UNKNOWN_KIND))
                    }
                    // Server-to-client kinds sent to us.
                    Ok(other) => Some(error(
                        other.endpoint().unwrap_or(EndpointId(0)),
                        other.kind_byte(),
                        MediaErrorCode::UNKNOWN_KIND,
                    )),
                };
            }
            if let Some(r) = reply {
                enqueue(c, &r);
            }
        }
    }

    fn fan_out(&mut self) {
        let mut frame = Frame::default();
        let mut bytes = [0u8; MAX_MESSAGE_LEN];
        let Self {
            endpoints,
            conns,
            metrics,
            ..
        } = self;
        for e in endpoints.values_mut() {
            if e.subscribers.is_empty() {
                while e.ep.frames.pop_into(&mut frame) {}
                continue;
            }
            while e.ep.frames.pop_into(&mut frame) {
                let msg = MediaMessage::Frame(MediaFrame {
                    endpoint: e.ep.id,
                    seq: frame.seq,
                    media_ts: frame.media_ts.0,
                    flags: media_flags(frame.flags),
                    sample_rate: e.ep.rate,
                    samples: Samples::new(frame.samples()),
                });
                let Ok(n) = msg.encode_into(&mut bytes) else {
                    continue;
                };
                for c in conns.iter_mut().filter(|c| e.subscribers.contains(&c.id)) {
                    if c.out.len() + n <= OUT_CAPACITY {
                        c.out.extend_from_slice(&bytes[..n]);
                        metrics.frames_out.fetch_add(1, Ordering::Relaxed);
                    } else {
                        metrics.frames_dropped.fetch_add(1, Ordering::Relaxed);
                        match c.dropped.iter_mut().find(|(id, _)| *id == e.ep.id) {
                            Some((_, n)) => *n += 1,
                            None => c.dropped.push((e.ep.id, 1)),
                        }
                    }
                }
            }
        }
        // Tell slow subscribers what they missed, once there is room.
        for c in conns.iter_mut() {
            let mut k = 0;
            while k < c.dropped.len() {
                let (id, count) = c.dropped[k];
                let msg = MediaMessage::Dropped(Dropped {
                    endpoint: id,
                    count,
                });
                if c.out.len() + msg.encoded_len() <= OUT_CAPACITY {
                    enqueue(c, &msg);
                    c.dropped.swap_remove(k);
                } else {
                    k += 1;
                }
            }
        }
    }
}

fn media_flags(f: FrameFlags) -> MediaFlags {
    let mut out = 0;
    if f.contains(FrameFlags::CONCEALED) {
        out |= MediaFlags::CONCEALED.0;
    }
    if f.contains(FrameFlags::PARTIAL) {
        out |= MediaFlags::PARTIAL.0;
    }
    if f.contains(FrameFlags::RESYNC) {
        out |= MediaFlags::RESYNC.0;
    }
    MediaFlags(out)
}

fn ack(endpoint: EndpointId, request: u8) -> MediaMessage<'static> {
    MediaMessage::Ack(Ack { endpoint, request })
}

fn error(endpoint: EndpointId, request: u8, code: MediaErrorCode) -> MediaMessage<'static> {
    MediaMessage::Error(ErrorReply {
        endpoint,
        request,
        code,
    })
}

fn enqueue(c: &mut Conn, msg: &MediaMessage<'_>) {
    let mut bytes = [0u8; 64];
    if let Ok(n) = msg.encode_into(&mut bytes)
        && c.out.len() + n <= OUT_CAPACITY
    {
        c.out.extend_from_slice(&bytes[..n]);
    }
}

fn flush(c: &mut Conn) {
    while !c.out.is_empty() && !c.closed {
        match c.stream.write(&c.out) {
            Ok(0) => c.closed = true,
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => c.closed = true,
        }
    }
}
