//! Demo calls: the gateway at work with no Asterisk at all.
//!
//! With `[demo] enabled = true` (`mediagw --demo`), a service plays the part
//! Asterisk plays in a real call: it opens a session for tenant `demo`, asks
//! the real dataplane for an endpoint, and sends it 20 ms G.711 RTP packets
//! of a speech-like signal from a UDP socket on loopback, paced in real
//! time, for `duration_s`; then it closes the endpoint and keeps the final
//! RTP statistics with the session, like a real call. The calls show in
//! `mediagwctl watch`, `mediagwctl endpoints`, both `/metrics` and the
//! session store. Off by default; never used with real calls.
//!
//! The signal ([`SpeechLike`]) is sans-IO: syllables of a voiced source
//! (a gliding fundamental with formant-shaped harmonics) with pauses, so a
//! tap sounds like someone talking rather than a test tone.

use std::f32::consts::TAU;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mediagw_shared::codec::Codec;
use mediagw_shared::control::{EndpointCreate, EndpointDestroy};
use mediagw_shared::g711;
use mediagw_shared::ids::{SessionId, TenantId};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use crate::callflow::now_ms;
use crate::dataplane::Dataplane;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, TenantLabel};
use crate::service::{Service, Shutdown};
use crate::session::{Direction, Session, SessionEvent, SessionState, SessionStore, Store};

/// The session metadata key that marks a demo call (reconciliation leaves
/// those alone: they have no Asterisk channel).
pub const DEMO_KEY: &str = "demo";

/// `[demo]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Generate demo calls.
    pub enabled: bool,
    /// Their tenant.
    pub tenant: String,
    /// Calls at once.
    pub calls: u32,
    /// Each call's length, s.
    pub duration_s: u64,
    /// Pause between a call's end and the next, s.
    pub gap_s: u64,
    /// `ulaw` or `alaw`.
    pub format: String,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            tenant: "demo".to_owned(),
            calls: 2,
            duration_s: 60,
            gap_s: 3,
            format: "ulaw".to_owned(),
        }
    }
}

/// A speech-like signal at 8 kHz: syllables of about 200 ms with pauses.
#[derive(Debug, Clone)]
pub struct SpeechLike {
    n: u64,
    phase: f32,
    seed: u32,
}

impl SpeechLike {
    /// A new talker; `seed` varies pitch and rhythm between calls.
    pub fn new(seed: u32) -> Self {
        Self {
            n: 0,
            phase: 0.0,
            seed,
        }
    }

    /// Fills `out` with the next samples at 8 kHz.
    pub fn fill(&mut self, out: &mut [i16]) {
        const RATE: f32 = 8_000.0;
        for s in out {
            let t = self.n as f32 / RATE;
            // Syllable clock: ~4.5 per second, every fifth one silent.
            let syl_len = 0.22 + 0.03 * ((self.seed % 5) as f32);
            let syl = (t / syl_len) as u64;
            let within = (t / syl_len).fract();
            let voiced = (syl + u64::from(self.seed)) % 5 != 4;
            let env = if voiced {
                (within * std::f32::consts::PI).sin().powf(0.7)
            } else {
                0.0
            };
            // Fundamental glides within each syllable (intonation).
            let base = 110.0 + 15.0 * ((self.seed % 7) as f32);
            let f0 = base * (1.0 + 0.15 * (TAU * 0.7 * t).sin() - 0.1 * within);
            self.phase = (self.phase + TAU * f0 / RATE) % TAU;
            // Harmonics shaped by two formants that move per syllable.
            let f1 = 500.0 + 250.0 * ((syl % 3) as f32);
            let f2 = 1400.0 + 500.0 * ((syl % 4) as f32);
            let mut v = 0.0;
            for h in 1..=12 {
                let fh = f0 * h as f32;
                let g1 = 1.0 / (1.0 + ((fh - f1) / 180.0).powi(2));
                let g2 = 0.6 / (1.0 + ((fh - f2) / 250.0).powi(2));
                v += (g1 + g2 + 0.02) * (self.phase * h as f32).sin();
            }
            *s = (v * env * 5_000.0).clamp(-32_000.0, 32_000.0) as i16;
            self.n += 1;
        }
    }
}

/// The demo service.
#[derive(Debug)]
pub struct Demo {
    cfg: DemoConfig,
    dataplane: Dataplane,
    store: Store,
    metrics: Metrics,
}

impl Demo {
    /// A demo generator over the real dataplane and session store.
    pub fn new(cfg: DemoConfig, dataplane: Dataplane, store: Store, metrics: Metrics) -> Self {
        Self {
            cfg,
            dataplane,
            store,
            metrics,
        }
    }

    async fn serve(self, shutdown: Shutdown) -> Result<()> {
        let tenant: TenantId = self
            .cfg
            .tenant
            .parse()
            .map_err(|e| Error::invalid(format!("demo.tenant: {e}")))?;
        let codec = match self.cfg.format.as_str() {
            "ulaw" => Codec::Pcmu,
            "alaw" => Codec::Pcma,
            other => {
                return Err(Error::invalid(format!(
                    "demo.format `{other}`: ulaw or alaw"
                )));
            }
        };
        tracing::info!(calls = self.cfg.calls, tenant = %tenant, "demo calls on: a speech-like signal as RTP to the dataplane");
        let me = Arc::new(self);
        let mut slots = tokio::task::JoinSet::new();
        for slot in 0..me.cfg.calls.max(1) {
            let me = me.clone();
            let tenant = tenant.clone();
            let shutdown = shutdown.clone();
            slots.spawn(async move { me.slot(slot, tenant, codec, shutdown).await });
        }
        while slots.join_next().await.is_some() {}
        Ok(())
    }

    async fn slot(&self, slot: u32, tenant: TenantId, codec: Codec, shutdown: Shutdown) {
        let mut n: u64 = 0;
        // Session ids differ from one start to the next (a shared store may
        // still hold the last run's).
        let boot: u16 = rand::random();
        // Stagger the slots so calls do not all start and end together.
        let stagger = Duration::from_millis(u64::from(slot) * 1_500);
        tokio::select! { () = shutdown.cancelled() => return, () = tokio::time::sleep(stagger) => {} }
        let mut link = self.dataplane.state();
        while !shutdown.is_cancelled() {
            // Wait for the dataplane rather than fail calls while it starts.
            while !link.borrow_and_update().link.is_up() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = link.changed() => if changed.is_err() { return },
                }
            }
            n += 1;
            let id = format!("demo-{boot:04x}-{slot}-{n}");
            if let Err(e) = self.call(&tenant, &id, codec, slot, &shutdown).await {
                tracing::warn!(session = id, error = %e, "demo call failed; the next one follows");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(self.cfg.gap_s.max(1))) => {}
            }
        }
    }

    async fn call(
        &self,
        tenant: &TenantId,
        id: &str,
        codec: Codec,
        seed: u32,
        shutdown: &Shutdown,
    ) -> Result<()> {
        let session_id: SessionId = id
            .parse()
            .map_err(|e| Error::internal(format!("demo session id: {e}")))?;
        let mut session = Session::new(
            tenant.clone(),
            session_id.clone(),
            self.store.host(),
            Direction::Inbound,
            now_ms(),
        );
        session.codec = Some(codec.to_string());
        session.caller = Some("demo".into());
        let _ = session.set_metadata(DEMO_KEY, "true", now_ms());
        let created = self
            .dataplane
            .call(EndpointCreate::new(tenant.clone(), session_id, codec))
            .await?;
        session.endpoint = Some(created.endpoint);
        session.endpoint_addr = Some(created.local_addr.to_string());
        let _ = session.transition(SessionState::MediaConnecting, now_ms());
        let _ = session.transition(SessionState::Active, now_ms());
        match self.store.create(&session).await {
            Ok(rev) => session.revision = rev,
            Err(e) => tracing::debug!(error = %e, "demo session not stored"),
        }
        let _ = self.store.publish(&SessionEvent::created(&session)).await;
        let label = TenantLabel {
            tenant: tenant.as_str().to_owned(),
        };
        self.metrics.calls_active.get_or_create(&label).inc();
        tracing::info!(session = id, endpoint = %created.endpoint, to = %created.local_addr, "demo call started");
        let sent = send_rtp(
            created.local_addr,
            codec,
            seed,
            Duration::from_secs(self.cfg.duration_s.max(1)),
            shutdown,
        )
        .await;
        let stats = self
            .dataplane
            .call(EndpointDestroy {
                endpoint: created.endpoint,
            })
            .await;
        self.metrics.calls_active.get_or_create(&label).dec();
        self.metrics.calls_ended.get_or_create(&label).inc();
        let _ = session.transition(SessionState::Ending, now_ms());
        if let Ok(s) = &stats {
            session.final_stats = serde_json::to_value(s).ok();
            tracing::info!(
                session = id,
                sent = sent.as_ref().copied().unwrap_or(0),
                received = s.rx.packets,
                lost = s.rx.lost,
                jitter_ms = s.rx.jitter_ms,
                "demo call ended"
            );
        }
        let from = session.state();
        let _ = session.finish(SessionState::Ended, "demo call finished", now_ms());
        if let Err(e) = self.store.update(&session).await {
            tracing::debug!(error = %e, "demo session not stored");
        }
        let _ = self
            .store
            .publish(&SessionEvent::transitioned(&session, from))
            .await;
        sent?;
        stats.map(|_| ())
    }
}

/// Sends 20 ms packets to `to` until `length` passed or shutdown; returns
/// how many.
async fn send_rtp(
    to: SocketAddr,
    codec: Codec,
    seed: u32,
    length: Duration,
    shutdown: &Shutdown,
) -> Result<u64> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::internal("demo RTP socket").with_cause(e))?;
    let mut voice = SpeechLike::new(seed);
    let ssrc: u32 = rand::random();
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    let pt = codec.default_payload_type();
    let mut pcm = [0i16; 160];
    let mut packet = [0u8; 12 + 160];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = length.as_millis() as u64 / 20;
    let mut sent = 0;
    while sent < total {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        voice.fill(&mut pcm);
        packet[0] = 0x80;
        packet[1] = pt | if sent == 0 { 0x80 } else { 0 };
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet[4..8].copy_from_slice(&ts.to_be_bytes());
        packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
        for (b, s) in packet[12..].iter_mut().zip(pcm) {
            *b = match codec {
                Codec::Pcma => g711::linear_to_alaw(s),
                _ => g711::linear_to_ulaw(s),
            };
        }
        socket
            .send_to(&packet, to)
            .await
            .map_err(|e| Error::internal("demo RTP send").with_cause(e))?;
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(160);
        sent += 1;
    }
    Ok(sent)
}

impl Service for Demo {
    fn name(&self) -> &'static str {
        "demo"
    }

    fn run(
        self: Box<Self>,
        shutdown: Shutdown,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> {
        Box::pin(self.serve(shutdown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_like_has_syllables_and_pauses() {
        let mut v = SpeechLike::new(3);
        let mut buf = vec![0i16; 8_000 * 3];
        v.fill(&mut buf);
        // 20 ms frame energies: some loud, some silent, never clipped.
        let energies: Vec<f64> = buf
            .chunks(160)
            .map(|f| f.iter().map(|s| f64::from(*s).abs()).sum::<f64>() / 160.0)
            .collect();
        let loud = energies.iter().filter(|e| **e > 1_000.0).count();
        let quiet = energies.iter().filter(|e| **e < 50.0).count();
        assert!(loud > 40, "loud frames: {loud}");
        assert!(quiet > 10, "quiet frames: {quiet}");
        assert!(buf.iter().all(|s| s.abs() <= 32_000));
        // Deterministic per seed.
        let mut again = SpeechLike::new(3);
        let mut buf2 = vec![0i16; 8_000 * 3];
        again.fill(&mut buf2);
        assert_eq!(buf, buf2);
    }
}
