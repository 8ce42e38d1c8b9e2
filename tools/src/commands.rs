//! Each command: connect, ask, print.
//!
//! Every command that talks to the dataplane connects to the control socket
//! first, which does the `hello` handshake and checks the version. Output
//! goes to the writer given (stdout); progress and reports of the media
//! commands to stderr.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hound::{SampleFormat, WavReader, WavSpec, WavWriter};
use mediagw_shared::control::{
    Call, Drain, EndpointCreate, EndpointDestroy, EndpointList, EndpointStatsQuery, Shutdown,
    StatusQuery,
};
use mediagw_shared::ids::EndpointId;
use mediagw_shared::media::{FrameFlags, MediaKind, MediaMessage, Play, PlayFlags, Samples};
use mediagw_shared::units::ClockRate;
use serde_json::{Value, json};

use crate::cli::{self, Cli, Command};
use crate::client::Client;
use crate::error::{CtlError, SocketKind};
use crate::format;
use crate::interrupt::Interrupt;
use crate::media::{self, MediaConn, Pumped};
use crate::watch::{self, RateTracker};

/// The exit code of a `play` stopped by Ctrl-C: 128 + SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Frames of media per second.
const FRAMES_PER_SECOND: u64 = 50;

/// How long `play` waits for the reason after the dataplane closed on it.
const REFUSAL_GRACE: Duration = Duration::from_millis(200);

/// ANSI: cursor home, clear screen.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// Where a command prints.
pub struct Output<'a> {
    /// stdout, or a buffer in tests.
    pub out: &'a mut dyn Write,
    /// Whether `out` is a terminal (`watch` clears the screen only then).
    pub tty: bool,
}

impl std::fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").field("tty", &self.tty).finish()
    }
}

/// Runs the command; returns the exit code on success.
pub fn run(cli: &Cli, o: &mut Output<'_>) -> Result<u8, CtlError> {
    match &cli.command {
        Command::Status => {
            let mut c = connect(cli)?;
            let result = c.call_value(StatusQuery)?;
            print_result::<StatusQuery>(cli, o, result, |s| format::status(c.server(), &s))
        }
        Command::Endpoints { tenant } => {
            let mut c = connect(cli)?;
            let result = c.call_value(EndpointList {
                tenant: tenant.clone(),
            })?;
            print_result::<EndpointList>(cli, o, result, |l| format::endpoints(&l.endpoints))
        }
        Command::Stats { endpoint } => {
            let mut c = connect(cli)?;
            let result = c.call_value(EndpointStatsQuery {
                endpoint: *endpoint,
            })?;
            print_result::<EndpointStatsQuery>(cli, o, result, |s| format::stats(&s))
        }
        Command::Create(args) => create(cli, args, o),
        Command::Destroy { endpoint } => {
            let mut c = connect(cli)?;
            let result = c.call_value(EndpointDestroy {
                endpoint: *endpoint,
            })?;
            print_result::<EndpointDestroy>(cli, o, result, |s| {
                format!(
                    "destroyed {}; final statistics:\n\n{}",
                    s.endpoint,
                    format::stats(&s)
                )
            })
        }
        Command::Drain => {
            let mut c = connect(cli)?;
            let result = c.call_value(Drain)?;
            print_result::<Drain>(cli, o, result, |_| {
                "draining: new endpoints are refused, existing ones are served until destroyed\n"
                    .to_owned()
            })
        }
        Command::Shutdown { now } => {
            let mut c = connect(cli)?;
            let result = c.call_value(Shutdown { drain: !now })?;
            print_result::<Shutdown>(cli, o, result, |_| {
                if *now {
                    "shutting down now: every endpoint is destroyed\n".to_owned()
                } else {
                    "shutting down: draining, the dataplane exits when the last endpoint is \
                     destroyed\n"
                        .to_owned()
                }
            })
        }
        Command::Tap(args) => tap(cli, args, o),
        Command::Play(args) => play(cli, args, o),
        Command::Watch(args) => watch(cli, args, o),
        Command::Calls => {
            let v = controlplane(cli, "GET", "/calls")?;
            if cli.json {
                return print_json(o, &v);
            }
            print(
                o,
                &format::calls(v["calls"].as_array().map_or(&[][..], Vec::as_slice)),
            )
        }
        Command::Sessions { tenant } => {
            let path = match tenant {
                Some(t) => format!("/sessions?tenant={t}"),
                None => "/sessions".to_owned(),
            };
            let v = controlplane(cli, "GET", &path)?;
            if cli.json {
                return print_json(o, &v);
            }
            print(
                o,
                &format::sessions(v["sessions"].as_array().map_or(&[][..], Vec::as_slice)),
            )
        }
        Command::Hangup { session } => {
            controlplane(cli, "DELETE", &format!("/calls/{session}"))?;
            if cli.json {
                return print_json(o, &json!({}));
            }
            print(o, &format!("hung up {session}\n"))
        }
    }
}

/// One request to the control plane's local HTTP listener; its JSON answer
/// (`null` for an empty one).
fn controlplane(cli: &Cli, method: &str, path: &str) -> Result<Value, CtlError> {
    let url = format!("{}{path}", cli.controlplane.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(cli.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let fail = |message: String| CtlError::ControlPlane {
        url: url.clone(),
        message,
    };
    let response = match method {
        "DELETE" => agent.delete(&url).call(),
        _ => agent.get(&url).call(),
    };
    let mut response = response.map_err(|e| fail(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| fail(e.to_string()))?;
    let value: Value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).map_err(|e| fail(format!("not JSON ({e}): {body}")))?
    };
    if status >= 400 {
        let message = value["error"]["message"].as_str().map_or_else(
            || format!("HTTP {status}"),
            |m| format!("HTTP {status}: {m}"),
        );
        return Err(fail(message));
    }
    Ok(value)
}

fn connect(cli: &Cli) -> Result<Client, CtlError> {
    Client::connect(&cli.socket, cli.timeout)
}

/// Prints `result` as JSON with `--json`, else decoded and formatted.
fn print_result<C: Call>(
    cli: &Cli,
    o: &mut Output<'_>,
    result: Value,
    human: impl FnOnce(C::Reply) -> String,
) -> Result<u8, CtlError> {
    if cli.json {
        return print_json(o, &result);
    }
    let reply = decode::<C>(result)?;
    print(o, &human(reply))
}

fn decode<C: Call>(result: Value) -> Result<C::Reply, CtlError> {
    mediagw_shared::control::decode_reply::<C>(result).map_err(|e| CtlError::Protocol(e.0))
}

fn print(o: &mut Output<'_>, text: &str) -> Result<u8, CtlError> {
    o.out
        .write_all(text.as_bytes())
        .and_then(|()| o.out.flush())
        .map_err(|e| CtlError::io("stdout", e))?;
    Ok(0)
}

fn print_json(o: &mut Output<'_>, value: &Value) -> Result<u8, CtlError> {
    print(o, &format!("{value}\n"))
}

// ---------------------------------------------------------------------------
// create
// ---------------------------------------------------------------------------

fn create(cli: &Cli, args: &cli::Create, o: &mut Output<'_>) -> Result<u8, CtlError> {
    let mut request = EndpointCreate::new(args.tenant.clone(), args.session.clone(), args.codec);
    request.ptime_ms = args.ptime;
    request.payload_type = args.payload_type;
    request.rtcp = args.rtcp;
    request.jitter = args.jitter()?;
    request.bind_ip = args.bind_ip;
    let mut c = connect(cli)?;
    let result = c.call_value(request)?;
    print_result::<EndpointCreate>(cli, o, result, |created| {
        let rtcp = created
            .rtcp_port
            .map_or_else(String::new, |port| format!(" rtcp {port}"));
        format!("{} {}{rtcp}\n", created.endpoint, created.local_addr)
    })
}

// ---------------------------------------------------------------------------
// tap
// ---------------------------------------------------------------------------

/// What a tap received.
#[derive(Debug, Default)]
struct TapCounts {
    frames: u64,
    concealed: u64,
    /// From `Dropped` messages.
    dropped: u64,
    /// From gaps in the frames' sequence numbers.
    gaps: u64,
    malformed: u64,
    last_seq: Option<u64>,
}

/// Why a tap stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TapEnd {
    Limit,
    Interrupted,
    Closed,
}

fn tap(cli: &Cli, args: &cli::Tap, o: &mut Output<'_>) -> Result<u8, CtlError> {
    let endpoint = args.endpoint;
    let stats = connect(cli)?.call(EndpointStatsQuery { endpoint })?;
    let interrupt = Interrupt::install()?;
    let mut media = MediaConn::connect(&cli.media_socket, cli.timeout)?;
    media.subscribe(endpoint)?;
    interrupt.shutdown_on_interrupt(media.stream())?;
    let mut wav = WavOut::create(&args.out, stats.codec.clock_rate())?;
    let limit = args.seconds.map(|s| s.saturating_mul(FRAMES_PER_SECOND));
    let mut counts = TapCounts::default();
    let pumped = media.pump(None, |message| {
        match message {
            Ok(MediaMessage::Frame(f)) if f.endpoint == endpoint => {
                wav.write(f.sample_rate, f.samples)?;
                counts.frames += 1;
                if f.flags.contains(FrameFlags::CONCEALED) {
                    counts.concealed += 1;
                }
                if let Some(last) = counts.last_seq {
                    counts.gaps += f.seq.saturating_sub(last).saturating_sub(1);
                }
                counts.last_seq = Some(f.seq);
                if counts.frames.is_multiple_of(FRAMES_PER_SECOND) {
                    wav.flush()?;
                }
                if limit.is_some_and(|limit| counts.frames >= limit) {
                    return Ok(ControlFlow::Break(()));
                }
            }
            Ok(MediaMessage::Dropped(d)) if d.endpoint == endpoint => counts.dropped += d.count,
            Ok(MediaMessage::Error(e)) => {
                return Err(CtlError::Media {
                    code: e.code,
                    request: request_name(e.request),
                    endpoint,
                });
            }
            Ok(_) => {}
            Err(_) => counts.malformed += 1,
        }
        Ok(ControlFlow::Continue(()))
    });
    // Whatever happened, leave a valid WAV behind.
    let rate = wav.rate;
    let finalized = wav.close();
    let end = match pumped? {
        Pumped::Stopped => TapEnd::Limit,
        Pumped::Eof if interrupt.is_hit() => TapEnd::Interrupted,
        Pumped::Eof => TapEnd::Closed,
    };
    finalized?;
    let dropped = counts.dropped.max(counts.gaps);
    eprintln!(
        "tap {endpoint}: {} frame{} ({:.2} s at {} Hz) to {}: {} concealed, {} dropped; {}",
        counts.frames,
        format::plural(counts.frames as usize),
        counts.frames as f64 / FRAMES_PER_SECOND as f64,
        rate.0,
        args.out.display(),
        counts.concealed,
        dropped,
        match end {
            TapEnd::Limit => "done",
            TapEnd::Interrupted => "interrupted",
            TapEnd::Closed => "the dataplane closed the media socket",
        }
    );
    if counts.malformed > 0 || media.skipped_bytes() > 0 {
        eprintln!(
            "tap {endpoint}: {} malformed message(s) skipped, {} byte(s) resynced",
            counts.malformed,
            media.skipped_bytes()
        );
    }
    if cli.json {
        print_json(
            o,
            &json!({
                "endpoint": endpoint.to_string(),
                "file": args.out.display().to_string(),
                "sample_rate": rate.0,
                "frames": counts.frames,
                "concealed": counts.concealed,
                "dropped": dropped,
                "stopped": match end {
                    TapEnd::Limit => "limit",
                    TapEnd::Interrupted => "interrupted",
                    TapEnd::Closed => "closed",
                },
            }),
        )?;
    }
    Ok(0)
}

fn request_name(kind: u8) -> &'static str {
    match MediaKind::from_byte(kind) {
        Some(MediaKind::Subscribe) => "subscribe",
        Some(MediaKind::Unsubscribe) => "unsubscribe",
        Some(MediaKind::Play) => "play",
        _ => "a request",
    }
}

/// The tap's WAV file: mono PCM16 at the frames' rate.
struct WavOut {
    path: PathBuf,
    /// `None` only while it is being replaced.
    writer: Option<WavWriter<BufWriter<File>>>,
    rate: ClockRate,
    samples: u64,
}

impl WavOut {
    /// Creates the file at the endpoint's rate; the first frame may still
    /// change it.
    fn create(path: &Path, rate: ClockRate) -> Result<Self, CtlError> {
        Ok(Self {
            path: path.to_owned(),
            writer: Some(Self::open(path, rate)?),
            rate,
            samples: 0,
        })
    }

    fn open(path: &Path, rate: ClockRate) -> Result<WavWriter<BufWriter<File>>, CtlError> {
        WavWriter::create(path, Self::spec(rate)).map_err(|e| CtlError::wav(path, e))
    }

    fn spec(rate: ClockRate) -> WavSpec {
        WavSpec {
            channels: 1,
            sample_rate: rate.0,
            bits_per_sample: 16,
            sample_format: SampleFormat::Int,
        }
    }

    fn write(&mut self, rate: ClockRate, samples: Samples<'_>) -> Result<(), CtlError> {
        if rate != self.rate {
            if self.samples > 0 || rate.0 == 0 {
                return Err(CtlError::Protocol(format!(
                    "a frame at {} Hz in a stream at {} Hz",
                    rate.0, self.rate.0
                )));
            }
            // Finalize the old writer before the new one truncates the
            // file: dropping it later would write its header over the new.
            self.close()?;
            self.writer = Some(Self::open(&self.path, rate)?);
            self.rate = rate;
        }
        let path = &self.path;
        let writer = self.writer.as_mut().ok_or_else(|| closed(path))?;
        for sample in samples.iter() {
            writer
                .write_sample(sample)
                .map_err(|e| CtlError::wav(path, e))?;
        }
        self.samples += samples.len() as u64;
        Ok(())
    }

    /// Updates the header, so that the file is valid even if the process
    /// is killed.
    fn flush(&mut self) -> Result<(), CtlError> {
        let path = &self.path;
        let writer = self.writer.as_mut().ok_or_else(|| closed(path))?;
        writer.flush().map_err(|e| CtlError::wav(path, e))
    }

    /// Writes the final header.
    fn close(&mut self) -> Result<(), CtlError> {
        match self.writer.take() {
            Some(writer) => writer.finalize().map_err(|e| CtlError::wav(&self.path, e)),
            None => Ok(()),
        }
    }
}

fn closed(path: &Path) -> CtlError {
    CtlError::Wav {
        path: path.to_owned(),
        message: "already closed after an error".into(),
    }
}

// ---------------------------------------------------------------------------
// play
// ---------------------------------------------------------------------------

fn play(cli: &Cli, args: &cli::Play, o: &mut Output<'_>) -> Result<u8, CtlError> {
    let endpoint = args.endpoint;
    let (rate, samples) = read_wav(&args.file)?;
    let stats = connect(cli)?.call(EndpointStatsQuery { endpoint })?;
    let wanted = stats.codec.clock_rate();
    if wanted != rate {
        return Err(CtlError::Wav {
            path: args.file.clone(),
            message: format!(
                "{} Hz audio, but {endpoint} ({}) takes {} Hz",
                rate.0, stats.codec, wanted.0
            ),
        });
    }
    let interrupt = Interrupt::install()?;
    let mut media = MediaConn::connect(&cli.media_socket, cli.timeout)?;
    let refusals = watch_refusals(media.try_clone()?, endpoint)?;

    let frame_len = rate.samples_in_ms(20) as usize;
    let mut padded = vec![0; frame_len];
    let start = crate::now();
    let mut sent = 0u64;
    let mut interrupted = false;
    for (index, chunk) in (0u64..).zip(samples.chunks(frame_len)) {
        if wait_until(start + media::play_due(index), &interrupt, &refusals)? {
            interrupted = true;
            break;
        }
        let pcm = if chunk.len() == frame_len {
            chunk
        } else {
            padded[..chunk.len()].copy_from_slice(chunk);
            &padded
        };
        let play = MediaMessage::Play(Play {
            endpoint,
            seq: index,
            flags: if index == 0 {
                PlayFlags::MARKER
            } else {
                PlayFlags::default()
            },
            sample_rate: rate,
            samples: Samples::new(pcm),
        });
        if let Err(e) = media.send(&play) {
            // A refusal is followed by a close: report the refusal.
            return Err(refusals.recv_timeout(REFUSAL_GRACE).unwrap_or(e));
        }
        sent += 1;
    }
    // Let the lead play out, still listening for a refusal.
    if !interrupted {
        let end = media::FRAME.saturating_mul(u32::try_from(sent).unwrap_or(u32::MAX));
        interrupted = wait_until(start + end, &interrupt, &refusals)?;
    }
    let seconds = sent as f64 / FRAMES_PER_SECOND as f64;
    if cli.json {
        print_json(
            o,
            &json!({
                "endpoint": endpoint.to_string(),
                "file": args.file.display().to_string(),
                "sample_rate": rate.0,
                "frames": sent,
                "interrupted": interrupted,
            }),
        )?;
    } else {
        print(
            o,
            &format!(
                "played {sent} frame{} ({seconds:.2} s) into {endpoint}{}\n",
                format::plural(sent as usize),
                if interrupted { ", interrupted" } else { "" }
            ),
        )?;
    }
    Ok(if interrupted { EXIT_INTERRUPTED } else { 0 })
}

/// Reads a mono 16-bit WAV at 8 or 16 kHz.
fn read_wav(path: &Path) -> Result<(ClockRate, Vec<i16>), CtlError> {
    let reader = WavReader::open(path).map_err(|e| CtlError::wav(path, e))?;
    let spec = reader.spec();
    let bad = |message: String| {
        Err(CtlError::Wav {
            path: path.to_owned(),
            message,
        })
    };
    if spec.channels != 1 {
        return bad(format!(
            "{} channels; play takes mono (sox in.wav -c 1 out.wav)",
            spec.channels
        ));
    }
    if spec.sample_format != SampleFormat::Int || spec.bits_per_sample != 16 {
        return bad(format!(
            "{}-bit {} samples; play takes 16-bit PCM (sox in.wav -b 16 -e signed out.wav)",
            spec.bits_per_sample,
            match spec.sample_format {
                SampleFormat::Int => "integer",
                SampleFormat::Float => "float",
            }
        ));
    }
    let rate = ClockRate(spec.sample_rate);
    if rate != ClockRate::NARROWBAND && rate != ClockRate::WIDEBAND {
        return bad(format!(
            "{} Hz; play takes 8000 or 16000 Hz (sox in.wav -r 8000 out.wav)",
            spec.sample_rate
        ));
    }
    let samples = reader
        .into_samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CtlError::wav(path, e))?;
    Ok((rate, samples))
}

/// Reads the media connection in a thread: the dataplane answers a `Play`
/// only to refuse it, or closes the connection.
fn watch_refusals(
    mut reader: MediaConn,
    endpoint: EndpointId,
) -> Result<mpsc::Receiver<CtlError>, CtlError> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("media-reader".into())
        .spawn(move || {
            let mut refusal = None;
            let pumped = reader.pump(None, |message| {
                if let Ok(MediaMessage::Error(e)) = message {
                    refusal = Some(CtlError::Media {
                        code: e.code,
                        request: request_name(e.request),
                        endpoint,
                    });
                    return Ok(ControlFlow::Break(()));
                }
                Ok(ControlFlow::Continue(()))
            });
            let error = match (pumped, refusal) {
                (_, Some(refusal)) => refusal,
                (Ok(_), None) => CtlError::Closed {
                    which: SocketKind::Media,
                    mid_message: false,
                },
                (Err(e), None) => e,
            };
            // The receiver is gone once play has finished: nothing to tell.
            let _ = tx.send(error);
        })
        .map_err(|e| CtlError::io("media reader thread", e))?;
    Ok(rx)
}

/// Waits until `deadline`; returns whether Ctrl-C came first, or the
/// dataplane's refusal.
fn wait_until(
    deadline: Instant,
    interrupt: &Interrupt,
    refusals: &mpsc::Receiver<CtlError>,
) -> Result<bool, CtlError> {
    const STEP: Duration = Duration::from_millis(20);
    loop {
        if let Ok(e) = refusals.try_recv() {
            return Err(e);
        }
        let left = deadline.saturating_duration_since(crate::now());
        if left.is_zero() {
            return Ok(interrupt.is_hit());
        }
        if interrupt.sleep(left.min(STEP)) {
            return Ok(true);
        }
    }
}

// ---------------------------------------------------------------------------
// watch
// ---------------------------------------------------------------------------

fn watch(cli: &Cli, args: &cli::Watch, o: &mut Output<'_>) -> Result<u8, CtlError> {
    let interrupt = Interrupt::install()?;
    let mut c = connect(cli)?;
    let interval = Duration::from_millis(args.interval);
    let start = crate::now();
    let mut tracker = RateTracker::default();
    let mut refreshes = 0u64;
    loop {
        let status = c.call_value(StatusQuery)?;
        let listing = c.call_value(EndpointList {
            tenant: args.tenant.clone(),
        })?;
        if cli.json {
            let endpoints = listing.get("endpoints").cloned().unwrap_or(Value::Null);
            print_json(o, &json!({ "status": status, "endpoints": endpoints }))?;
        } else {
            let status = decode::<StatusQuery>(status)?;
            let listing = decode::<EndpointList>(listing)?;
            let view = tracker.update(
                crate::now().saturating_duration_since(start),
                status,
                listing.endpoints,
            );
            let screen = watch::render(c.server(), &view, interval, args.top);
            let separator = match (o.tty, refreshes) {
                (true, _) => CLEAR_SCREEN,
                (false, 0) => "",
                (false, _) => "\n",
            };
            print(o, &format!("{separator}{screen}"))?;
        }
        refreshes += 1;
        if args.count.is_some_and(|count| refreshes >= count) || interrupt.sleep(interval) {
            return Ok(0);
        }
    }
}
