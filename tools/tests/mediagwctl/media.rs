//! `tap` and `play` through the media socket.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use hound::{SampleFormat, WavReader, WavSpec, WavWriter};
use mediagw_shared::media::{FrameFlags, MediaErrorCode, PlayFlags};
use serde_json::Value;

use crate::fake::{EP_PCMU, EP_SLIN16, Fake, MediaScript};
use crate::{finish, run, spawn};

/// `n` frames of `len` distinct samples each.
fn frames(n: usize, len: usize) -> Vec<(FrameFlags, Vec<i16>)> {
    (0..n)
        .map(|f| {
            let flags = if f % 7 == 3 {
                FrameFlags::CONCEALED
            } else {
                FrameFlags::default()
            };
            let samples = (0..len)
                .map(|i| ((f * len + i) as i32 * 37 % 65_536 - 32_768) as i16)
                .collect();
            (flags, samples)
        })
        .collect()
}

fn wav_samples(path: &Path) -> (WavSpec, Vec<i16>) {
    let mut reader = WavReader::open(path).unwrap();
    let spec = reader.spec();
    let samples = reader.samples::<i16>().collect::<Result<_, _>>().unwrap();
    (spec, samples)
}

fn write_wav(path: &Path, channels: u16, rate: u32, bits: u16, samples: &[i16]) {
    let spec = WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: SampleFormat::Int,
    };
    let mut w = WavWriter::create(path, spec).unwrap();
    for &s in samples {
        if bits == 16 {
            w.write_sample(s).unwrap();
        } else {
            w.write_sample(i32::from(s)).unwrap();
        }
    }
    w.finalize().unwrap();
}

fn flatten(frames: &[(FrameFlags, Vec<i16>)]) -> Vec<i16> {
    frames.iter().flat_map(|(_, s)| s.iter().copied()).collect()
}

#[test]
fn tap_stops_after_n_seconds_with_exact_samples() {
    let sent = frames(60, 160);
    let fake = Fake::media(MediaScript {
        frames: sent.clone(),
        dropped: Some((20, 3)),
        ..MediaScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.wav");
    let r = run(
        &fake,
        &[
            "tap",
            "ep-1a2b",
            "--out",
            out.to_str().unwrap(),
            "--seconds",
            "1",
        ],
    );
    r.ok();
    let (spec, samples) = wav_samples(&out);
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (1, 8000, 16)
    );
    assert_eq!(samples, flatten(&sent[..50]));
    let concealed = sent[..50]
        .iter()
        .filter(|(f, _)| f.contains(FrameFlags::CONCEALED))
        .count();
    assert!(
        r.stderr.contains("50 frames (1.00 s at 8000 Hz)")
            && r.stderr
                .contains(&format!("{concealed} concealed, 3 dropped; done")),
        "{}",
        r.stderr
    );
    assert_eq!(fake.log.lock().unwrap().subscribes, [EP_PCMU]);
}

#[test]
fn tap_until_the_dataplane_closes_at_the_frames_rate() {
    let sent = frames(7, 320);
    let fake = Fake::media(MediaScript {
        frames: sent.clone(),
        rate: Some(16_000),
        ..MediaScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.wav");
    let r = run(
        &fake,
        &["tap", "ep-1a2c", "-o", out.to_str().unwrap(), "--json"],
    );
    let v: Value = serde_json::from_str(r.ok()).unwrap();
    assert_eq!(
        (v["frames"].as_u64(), v["stopped"].as_str()),
        (Some(7), Some("closed"))
    );
    assert_eq!(v["sample_rate"], 16_000);
    assert!(
        r.stderr.contains("the dataplane closed the media socket"),
        "{}",
        r.stderr
    );
    let (spec, samples) = wav_samples(&out);
    assert_eq!(spec.sample_rate, 16_000);
    assert_eq!(samples, flatten(&sent));
}

#[test]
fn tap_takes_the_rate_from_the_frames() {
    // ep-1a2b is PCMU (8 kHz), but the frames say 16 kHz: the frames win.
    let sent = frames(3, 320);
    let fake = Fake::media(MediaScript {
        frames: sent.clone(),
        rate: Some(16_000),
        ..MediaScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.wav");
    run(&fake, &["tap", "ep-1a2b", "--out", out.to_str().unwrap()]).ok();
    let (spec, samples) = wav_samples(&out);
    assert_eq!(spec.sample_rate, 16_000);
    assert_eq!(samples, flatten(&sent));
}

#[test]
fn tap_finalizes_the_wav_on_ctrl_c() {
    let sent = frames(120, 160);
    let fake = Fake::media(MediaScript {
        frames: sent.clone(),
        hold: true,
        ..MediaScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.wav");
    let (child, started) = spawn(&fake, &["tap", "ep-1a2b", "--out", out.to_str().unwrap()]);
    let pid = child.id().to_string();
    while fake.log.lock().unwrap().frames_sent < sent.len() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "frames never sent"
        );
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(200));
    let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(kill.success());
    let r = finish(child, started);
    r.ok();
    assert!(
        r.stderr.contains("120 frames") && r.stderr.contains("interrupted"),
        "{}",
        r.stderr
    );
    let (_, samples) = wav_samples(&out);
    assert_eq!(samples, flatten(&sent));
}

#[test]
fn tap_refused() {
    let fake = Fake::media(MediaScript {
        refuse_subscribe: Some(MediaErrorCode::TOO_MANY_SUBSCRIBERS),
        ..MediaScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.wav");
    let r = run(&fake, &["tap", "ep-1a2b", "--out", out.to_str().unwrap()]);
    assert_eq!(
        r.fails(1),
        "error: too_many_subscribers: the media socket refused subscribe for ep-1a2b\n"
    );
    assert!(!out.exists());
    // Unknown endpoints are caught on the control socket first.
    let r = run(&fake, &["tap", "ep-5", "--out", out.to_str().unwrap()]);
    assert_eq!(r.fails(1), "error: unknown_endpoint: no endpoint ep-5\n");
}

#[test]
fn tap_without_media_socket() {
    let fake = Fake::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.wav");
    let missing = dir.path().join("media.sock");
    let r = run(
        &fake,
        &[
            "tap",
            "ep-1a2b",
            "--out",
            out.to_str().unwrap(),
            "--media-socket",
            missing.to_str().unwrap(),
        ],
    );
    let err = r.fails(1);
    assert!(
        err.contains("media socket") && err.contains("--media-socket"),
        "{err}"
    );
}

#[test]
fn play_sends_paced_frames() {
    let fake = Fake::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.wav");
    // 25 whole frames and a partial one, padded with silence.
    let samples: Vec<i16> = (0..25 * 160 + 37).map(|i| (i * 7 % 3000) as i16).collect();
    write_wav(&file, 1, 8000, 16, &samples);
    let r = run(&fake, &["play", "ep-1a2b", file.to_str().unwrap()]);
    assert_eq!(r.ok(), "played 26 frames (0.52 s) into ep-1a2b\n");

    let log = fake.log.lock().unwrap();
    let plays = &log.plays;
    assert_eq!(plays.len(), 26);
    let mut got = Vec::new();
    for (i, p) in plays.iter().enumerate() {
        assert_eq!((p.endpoint, p.seq, p.rate), (EP_PCMU, i as u64, 8000));
        assert_eq!(p.samples.len(), 160);
        assert_eq!(p.flags & PlayFlags::MARKER.0 != 0, i == 0);
        got.extend_from_slice(&p.samples);
    }
    let mut expected = samples.clone();
    expected.resize(26 * 160, 0);
    assert_eq!(got, expected);

    // Paced at real time less the lead: 25 frame times minus 100 ms between
    // the first and the last, and the whole run lasts the audio's length.
    // Bounds are loose: at least 80% of nominal.
    let spread = plays[25].at - plays[0].at;
    assert!(spread >= Duration::from_millis(400 * 8 / 10), "{spread:?}");
    assert!(
        r.elapsed >= Duration::from_millis(520 * 8 / 10),
        "{:?}",
        r.elapsed
    );
}

#[test]
fn play_checks_the_file() {
    let fake = Fake::start();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let one_second = vec![0i16; 16_000];
    write_wav(Path::new(&path("stereo.wav")), 2, 8000, 16, &one_second);
    write_wav(Path::new(&path("cd.wav")), 1, 44_100, 16, &one_second);
    write_wav(Path::new(&path("24bit.wav")), 1, 8000, 24, &one_second);
    write_wav(Path::new(&path("wide.wav")), 1, 16_000, 16, &one_second);
    std::fs::write(path("junk.wav"), b"not a wav").unwrap();
    for (file, needle) in [
        ("stereo.wav", "2 channels; play takes mono"),
        ("cd.wav", "44100 Hz; play takes 8000 or 16000 Hz"),
        ("24bit.wav", "24-bit integer samples; play takes 16-bit PCM"),
        (
            "wide.wav",
            "16000 Hz audio, but ep-1a2b (PCMU) takes 8000 Hz",
        ),
        ("junk.wav", "junk.wav: "),
        ("missing.wav", "missing.wav: "),
    ] {
        let r = run(&fake, &["play", "ep-1a2b", &path(file)]);
        let err = r.fails(1);
        assert!(err.contains(needle), "{file}: {err}");
    }
    assert!(fake.log.lock().unwrap().plays.is_empty());
    // The same 16 kHz file suits the slin16 endpoint; unknown endpoints fail.
    let r = run(&fake, &["play", "ep-1a2c", &path("wide.wav"), "--json"]);
    let v: Value = serde_json::from_str(r.ok()).unwrap();
    assert_eq!(
        (v["frames"].as_u64(), v["sample_rate"].as_u64()),
        (Some(50), Some(16_000))
    );
    assert!(
        fake.log
            .lock()
            .unwrap()
            .plays
            .iter()
            .all(|p| p.endpoint == EP_SLIN16 && p.samples.len() == 320)
    );
    let r = run(&fake, &["play", "ep-77", &path("wide.wav")]);
    assert!(r.fails(1).contains("unknown_endpoint"));
}

#[test]
fn play_stops_when_refused() {
    let fake = Fake::media(MediaScript {
        refuse_play: Some((2, MediaErrorCode::SAMPLE_RATE_MISMATCH)),
        ..MediaScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.wav");
    write_wav(&file, 1, 8000, 16, &vec![1; 8000 * 2]);
    let r = run(&fake, &["play", "ep-1a2b", file.to_str().unwrap()]);
    assert_eq!(
        r.fails(1),
        "error: sample_rate_mismatch: the media socket refused play for ep-1a2b\n"
    );
    assert!(
        r.elapsed < Duration::from_millis(1500),
        "stopped early: {:?}",
        r.elapsed
    );
}
