//! A blocking media-socket connection: subscribe, receive frames, play.

use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use mediagw_shared::ids::EndpointId;
use mediagw_shared::media::{
    DecodeError, MAX_MESSAGE_LEN, MediaDecoder, MediaFormat, MediaKind, MediaMessage, Subscribe,
};

use crate::error::{CtlError, SocketKind};

/// A connection to the media socket.
#[derive(Debug)]
pub struct MediaConn {
    stream: UnixStream,
    decoder: MediaDecoder,
    timeout: Duration,
    out: Vec<u8>,
}

/// Why [`MediaConn::pump`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// The handler said stop.
    Stopped,
    /// The server closed the connection (or we shut it down).
    Eof,
}

impl MediaConn {
    /// Connects to `path`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, CtlError> {
        let stream = UnixStream::connect(path).map_err(|source| CtlError::Connect {
            which: SocketKind::Media,
            path: path.to_owned(),
            source,
        })?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| CtlError::io("media socket", e))?;
        Ok(Self {
            stream,
            decoder: MediaDecoder::new(),
            timeout,
            out: vec![0; MAX_MESSAGE_LEN],
        })
    }

    /// The socket, to shut it down from elsewhere (Ctrl-C).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// A second handle on the same connection with its own decoder, for a
    /// reader thread while this one writes. Take it before anything was
    /// read.
    pub fn try_clone(&self) -> Result<Self, CtlError> {
        Ok(Self {
            stream: self
                .stream
                .try_clone()
                .map_err(|e| CtlError::io("media socket", e))?,
            decoder: MediaDecoder::new(),
            timeout: self.timeout,
            out: vec![0; MAX_MESSAGE_LEN],
        })
    }

    /// Sends one message.
    pub fn send(&mut self, message: &MediaMessage<'_>) -> Result<(), CtlError> {
        let n = message
            .encode_into(&mut self.out)
            .map_err(|e| CtlError::Protocol(format!("cannot encode a media message: {e}")))?;
        self.stream
            .write_all(&self.out[..n])
            .map_err(|e| self.lost(e))
    }

    /// Subscribes to `endpoint`'s PCM16 audio and waits for the ack (at
    /// most the timeout). Frames follow on [`pump`](Self::pump).
    pub fn subscribe(&mut self, endpoint: EndpointId) -> Result<(), CtlError> {
        self.send(&MediaMessage::Subscribe(Subscribe {
            endpoint,
            format: MediaFormat::PCM16,
        }))?;
        let mut outcome = None;
        let deadline = crate::now() + self.timeout;
        let pumped = self.pump(Some(deadline), |message| {
            match message {
                Ok(MediaMessage::Ack(ack))
                    if ack.endpoint == endpoint && ack.request == MediaKind::Subscribe as u8 =>
                {
                    outcome = Some(Ok(()));
                }
                Ok(MediaMessage::Error(e)) if e.request == MediaKind::Subscribe as u8 => {
                    outcome = Some(Err(CtlError::Media {
                        code: e.code,
                        request: "subscribe",
                        endpoint,
                    }));
                }
                // Nothing else is expected before the ack; tolerate it.
                _ => return Ok(ControlFlow::Continue(())),
            }
            Ok(ControlFlow::Break(()))
        })?;
        match (pumped, outcome) {
            (Pumped::Stopped, Some(outcome)) => outcome,
            _ => Err(CtlError::Closed {
                which: SocketKind::Media,
                mid_message: self.decoder.buffered() > 0,
            }),
        }
    }

    /// Reads and decodes messages, handing each to `handle` until it breaks
    /// or the connection ends. With a deadline, passing it is a
    /// [`CtlError::Timeout`]; without one, reads block.
    pub fn pump(
        &mut self,
        deadline: Option<Instant>,
        mut handle: impl FnMut(
            Result<MediaMessage<'_>, DecodeError>,
        ) -> Result<ControlFlow<()>, CtlError>,
    ) -> Result<Pumped, CtlError> {
        let mut buf = vec![0; 64 * 1024];
        loop {
            while let Some(message) = self.decoder.next_message() {
                if handle(message)?.is_break() {
                    return Ok(Pumped::Stopped);
                }
            }
            let read_timeout = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(crate::now());
                    if left.is_zero() {
                        return Err(self.timed_out());
                    }
                    Some(left)
                }
                None => None,
            };
            self.stream
                .set_read_timeout(read_timeout)
                .map_err(|e| CtlError::io("media socket", e))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(Pumped::Eof),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A reset after we were told nothing more is an end too.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(Pumped::Eof),
                Err(e) => return Err(self.lost(e)),
            }
        }
    }

    /// Bytes dropped while resyncing after framing errors.
    pub fn skipped_bytes(&self) -> u64 {
        self.decoder.skipped_bytes()
    }

    fn timed_out(&self) -> CtlError {
        CtlError::Timeout {
            which: SocketKind::Media,
            after: self.timeout,
        }
    }

    fn lost(&self, e: io::Error) -> CtlError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timed_out(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => CtlError::Closed {
                which: SocketKind::Media,
                mid_message: false,
            },
            _ => CtlError::io("media socket", e),
        }
    }
}

/// The duration of one `Play` frame.
pub const FRAME: Duration = Duration::from_millis(20);

/// How far `play` runs ahead of real time, so that the dataplane's queue
/// never runs dry between two writes.
pub const PLAY_LEAD: Duration = Duration::from_millis(100);

/// When frame `index` of a playback is due, counted from its start: real
/// time less [`PLAY_LEAD`] (the first frames go at once).
pub fn play_due(index: u64) -> Duration {
    let nominal = FRAME.saturating_mul(u32::try_from(index).unwrap_or(u32::MAX));
    nominal.saturating_sub(PLAY_LEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn play_runs_a_lead_ahead_of_real_time() {
        let ms = |i| play_due(i).as_millis();
        assert_eq!([ms(0), ms(4), ms(5), ms(6), ms(50)], [0, 0, 0, 20, 900]);
        assert_eq!(play_due(u64::MAX), play_due(u64::from(u32::MAX)));
    }
}
