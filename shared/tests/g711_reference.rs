//! G.711 against implementations that are not ours, run at test time: ffmpeg
//! (libavcodec `pcm_mulaw`, `pcm_alaw`) and sox decode all 256 codes of each
//! law and ffmpeg encodes all 65536 16-bit values; a transliteration of the
//! ITU-T G.191 `g711.c` loops checks both directions as well.
//!
//! ffmpeg's encoder is not G.711 at two kinds of input; the test asserts
//! exactly where and how it differs (docs/g711.md, "ffmpeg's encoder").
//! A missing ffmpeg or sox fails the test: `tools/test-all` installs both.

use std::io::ErrorKind;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs, process};

use mediagw_shared::g711;

#[derive(Debug, Clone, Copy)]
enum Law {
    Ulaw,
    Alaw,
}

impl Law {
    const BOTH: [Self; 2] = [Self::Ulaw, Self::Alaw];

    fn ffmpeg_format(self) -> &'static str {
        match self {
            Self::Ulaw => "mulaw",
            Self::Alaw => "alaw",
        }
    }

    fn ffmpeg_codec(self) -> &'static str {
        match self {
            Self::Ulaw => "pcm_mulaw",
            Self::Alaw => "pcm_alaw",
        }
    }

    fn sox_encoding(self) -> &'static str {
        match self {
            Self::Ulaw => "mu-law",
            Self::Alaw => "a-law",
        }
    }

    fn decode(self, src: &[u8], dst: &mut [i16]) -> usize {
        match self {
            Self::Ulaw => g711::decode_ulaw(src, dst),
            Self::Alaw => g711::decode_alaw(src, dst),
        }
    }

    fn encode(self, src: &[i16], dst: &mut [u8]) -> usize {
        match self {
            Self::Ulaw => g711::encode_ulaw(src, dst),
            Self::Alaw => g711::encode_alaw(src, dst),
        }
    }

    /// Position of a code's level among the 128 levels of its sign,
    /// 0 (smallest magnitude) to 127.
    fn magnitude_index(self, code: u8) -> u8 {
        match self {
            Self::Ulaw => !code & 0x7F,
            Self::Alaw => (code ^ 0x55) & 0x7F,
        }
    }

    /// The 14-bit magnitudes (`x >> 2`, x >= 0) at which ffmpeg codes one
    /// level lower than G.711: from each segment boundary's G.711 decision
    /// value up to, not including, the midpoint between the two levels
    /// around it, which is where ffmpeg puts its threshold.
    fn ffmpeg_low_at(self) -> &'static [RangeInclusive<u16>] {
        match self {
            Self::Ulaw => &[
                31..=31,
                95..=95,
                223..=224,
                479..=482,
                991..=998,
                2015..=2030,
                4063..=4094,
            ],
            // Segments 0 and 1 share a step: no difference at their boundary.
            Self::Alaw => &[
                128..=128,
                256..=257,
                512..=515,
                1024..=1031,
                2048..=2063,
                4096..=4127,
            ],
        }
    }
}

/// Every i16, in order; as s16le bytes this is what the encode test feeds.
fn all_samples() -> Vec<i16> {
    (i16::MIN..=i16::MAX).collect()
}

#[test]
fn ffmpeg_decodes_every_code_like_us() {
    for law in Law::BOTH {
        let dir = Scratch::new("ffmpeg-decode", law);
        let codes: Vec<u8> = (0..=u8::MAX).collect();
        fs::write(dir.path("in.raw"), &codes).unwrap();
        let mut ffmpeg = Command::new("ffmpeg");
        ffmpeg
            .args(FFMPEG_QUIET)
            .args(["-f", law.ffmpeg_format(), "-ar", "8000", "-ac", "1", "-i"])
            .arg(dir.path("in.raw"))
            .args(["-f", "s16le", "-acodec", "pcm_s16le"])
            .arg(dir.path("out.raw"));
        run(ffmpeg, "ffmpeg");
        let theirs = read_s16le(&dir.path("out.raw"));
        assert_decodes_like_us(law, "ffmpeg", &codes, &theirs);
    }
}

#[test]
fn sox_decodes_every_code_like_us() {
    for law in Law::BOTH {
        let dir = Scratch::new("sox-decode", law);
        let codes: Vec<u8> = (0..=u8::MAX).collect();
        fs::write(dir.path("in.raw"), &codes).unwrap();
        let mut sox = Command::new("sox");
        sox.args([
            "-t",
            "raw",
            "-e",
            law.sox_encoding(),
            "-b",
            "8",
            "-r",
            "8000",
            "-c",
            "1",
        ])
        .arg(dir.path("in.raw"))
        .args(["-t", "raw", "-e", "signed", "-b", "16", "-L"])
        .arg(dir.path("out.raw"));
        run(sox, "sox");
        let theirs = read_s16le(&dir.path("out.raw"));
        assert_decodes_like_us(law, "sox", &codes, &theirs);
    }
}

/// ffmpeg encodes every non-negative sample as we do except on the listed
/// magnitudes, where it is exactly one level lower; it codes a negative
/// sample as the mirror of its two's complement 14-bit value, where G.191
/// mirrors the one's complement. Nothing else differs.
#[test]
fn ffmpeg_encodes_every_sample_as_documented() {
    for law in Law::BOTH {
        let dir = Scratch::new("ffmpeg-encode", law);
        let samples = all_samples();
        let bytes: Vec<u8> = samples.iter().flat_map(|x| x.to_le_bytes()).collect();
        fs::write(dir.path("in.raw"), bytes).unwrap();
        let mut ffmpeg = Command::new("ffmpeg");
        ffmpeg
            .args(FFMPEG_QUIET)
            .args(["-f", "s16le", "-ar", "8000", "-ac", "1", "-i"])
            .arg(dir.path("in.raw"))
            .args(["-f", law.ffmpeg_format(), "-acodec", law.ffmpeg_codec()])
            .arg(dir.path("out.raw"));
        run(ffmpeg, "ffmpeg");
        let ffmpeg = fs::read(dir.path("out.raw")).unwrap();
        assert_eq!(
            ffmpeg.len(),
            samples.len(),
            "{law:?}: ffmpeg wrote a byte per sample"
        );
        let mut ours = vec![0u8; samples.len()];
        assert_eq!(law.encode(&samples, &mut ours), samples.len());

        let at = |x: i16| usize::from(x.cast_unsigned() ^ 0x8000);
        let low_at = law.ffmpeg_low_at();
        let mut differ = 0;
        for &x in &samples {
            let (theirs, mine) = (ffmpeg[at(x)], ours[at(x)]);
            if theirs != mine {
                differ += 1;
            }
            if x < 0 {
                // -(x >> 2), limited to the largest positive 14-bit value
                // (ffmpeg's table gives -8192 the code of -8191).
                let magnitude = (-(i32::from(x) >> 2)).min(0x1FFF);
                let mirror = i16::try_from(magnitude << 2).unwrap(); // <= 32764
                assert_eq!(
                    theirs,
                    ffmpeg[at(mirror)] ^ 0x80,
                    "{law:?} {x}: ffmpeg mirror"
                );
                assert_eq!(mine, ours[at(!x)] ^ 0x80, "{law:?} {x}: G.191 mirror");
            } else if low_at.iter().any(|r| r.contains(&(x.cast_unsigned() >> 2))) {
                assert_eq!(
                    law.magnitude_index(theirs) + 1,
                    law.magnitude_index(mine),
                    "{law:?} {x}: ffmpeg {theirs:#04x}, G.711 {mine:#04x}",
                );
            } else {
                assert_eq!(theirs, mine, "{law:?} {x}");
            }
        }
        // 256 (mu-law) or 252 (A-law) non-negative ones from the list, the
        // rest negative.
        assert_eq!(differ, 964, "{law:?}: samples ffmpeg encodes differently");
        println!("{law:?}: 65536 samples encoded, {differ} differ from ffmpeg as documented");
    }
}

/// Ours against a line-by-line transliteration of G.191 `g711.c`.
#[test]
fn every_code_and_sample_matches_the_g191_loops() {
    let codes: Vec<u8> = (0..=u8::MAX).collect();
    let mut linear = vec![0i16; codes.len()];
    assert_eq!(g711::decode_ulaw(&codes, &mut linear), 256);
    assert_eq!(
        linear,
        codes
            .iter()
            .map(|&c| g191::ulaw_expand(c))
            .collect::<Vec<_>>()
    );
    assert_eq!(g711::decode_alaw(&codes, &mut linear), 256);
    assert_eq!(
        linear,
        codes
            .iter()
            .map(|&c| g191::alaw_expand(c))
            .collect::<Vec<_>>()
    );

    let samples = all_samples();
    let mut encoded = vec![0u8; samples.len()];
    assert_eq!(g711::encode_ulaw(&samples, &mut encoded), samples.len());
    for (&x, &code) in samples.iter().zip(&encoded) {
        assert_eq!(code, g191::ulaw_compress(x), "mu-law {x}");
    }
    assert_eq!(g711::encode_alaw(&samples, &mut encoded), samples.len());
    for (&x, &code) in samples.iter().zip(&encoded) {
        assert_eq!(code, g191::alaw_compress(x), "A-law {x}");
    }
}

fn assert_decodes_like_us(law: Law, tool: &str, codes: &[u8], theirs: &[i16]) {
    assert_eq!(
        theirs.len(),
        codes.len(),
        "{law:?}: {tool} wrote a sample per code"
    );
    let mut ours = vec![0i16; codes.len()];
    assert_eq!(law.decode(codes, &mut ours), codes.len());
    for ((&code, &t), &o) in codes.iter().zip(theirs).zip(&ours) {
        assert_eq!(t, o, "{law:?} code {code:#04x}: {tool} {t}, ours {o}");
    }
    println!(
        "{law:?}: {} codes decoded identically by {tool}",
        codes.len()
    );
}

fn read_s16le(path: &Path) -> Vec<i16> {
    let bytes = fs::read(path).unwrap();
    assert_eq!(bytes.len() % 2, 0, "{}: odd length", path.display());
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// ffmpeg options shared by every run: no prompt, errors only, overwrite.
const FFMPEG_QUIET: [&str; 5] = ["-hide_banner", "-nostdin", "-loglevel", "error", "-y"];

/// Runs `command`; a tool that is not installed fails the test, never skips
/// it.
fn run(mut command: Command, package: &str) {
    let tool = command.get_program().to_string_lossy().into_owned();
    let output = match command.output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "{tool} is not installed; this test needs it and does not skip. \
             tools/test-all installs it (apt-get install {package})"
        ),
        Err(e) => panic!("cannot run {tool}: {e}"),
    };
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
    );
}

/// A directory of its own under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str, law: Law) -> Self {
        let dir = env::temp_dir().join(format!("mediagw-g711-{}-{law:?}-{test}", process::id()));
        // A leftover from a crashed run with a recycled pid is fine to drop.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// ITU-T G.191 STL `g711.c` (v3.01), the four functions as written there:
/// `short` arithmetic, the loops, the one's complement for negatives.
mod g191 {
    pub fn alaw_compress(linbuf: i16) -> u8 {
        let mut ix: i16 = if linbuf < 0 {
            (!linbuf) >> 4
        } else {
            linbuf >> 4
        };
        if ix > 15 {
            let mut iexp: i16 = 1;
            while ix > 16 + 15 {
                ix >>= 1;
                iexp += 1;
            }
            ix -= 16;
            ix += iexp << 4;
        }
        if linbuf >= 0 {
            ix |= 0x0080;
        }
        (ix ^ 0x0055) as u8
    }

    pub fn alaw_expand(logbuf: u8) -> i16 {
        let mut ix = i16::from(logbuf) ^ 0x0055;
        ix &= 0x007F;
        let iexp = ix >> 4;
        let mut mant = ix & 0x000F;
        if iexp > 0 {
            mant += 16;
        }
        mant = (mant << 4) + 0x0008;
        if iexp > 1 {
            mant <<= iexp - 1;
        }
        if logbuf > 127 { mant } else { -mant }
    }

    pub fn ulaw_compress(linbuf: i16) -> u8 {
        let mut absno: i16 = if linbuf < 0 {
            ((!linbuf) >> 2) + 33
        } else {
            (linbuf >> 2) + 33
        };
        if absno > 0x1FFF {
            absno = 0x1FFF;
        }
        let mut i = absno >> 6;
        let mut segno: i16 = 1;
        while i != 0 {
            segno += 1;
            i >>= 1;
        }
        let high_nibble = 0x0008 - segno;
        let mut low_nibble = (absno >> segno) & 0x000F;
        low_nibble = 0x000F - low_nibble;
        let mut logbuf = (high_nibble << 4) | low_nibble;
        if linbuf >= 0 {
            logbuf |= 0x0080;
        }
        logbuf as u8
    }

    pub fn ulaw_expand(logbuf: u8) -> i16 {
        let sign: i16 = if logbuf < 0x80 { -1 } else { 1 };
        let mut mantissa = !i16::from(logbuf);
        let exponent = (mantissa >> 4) & 0x0007;
        let segment = exponent + 1;
        mantissa &= 0x000F;
        let step: i16 = 4 << segment;
        sign * ((0x0080 << exponent) + step * mantissa + step / 2 - 4 * 33)
    }
}
