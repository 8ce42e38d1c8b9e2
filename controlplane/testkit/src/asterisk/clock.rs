//! Wall-clock formatting the way Asterisk prints it: ARI `timestamp` and
//! `creationtime` (`2026-11-25T17:05:14.504+0000`), AMI `EventTV`, AMI Ping
//! `Timestamp` (`1795626314.504211`). Plain functions of a `SystemTime`
//! passed in; nothing here reads the clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch; times before it (never seen in practice) count
/// as the epoch itself.
pub(crate) fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO)
}

/// Whole seconds since the epoch, as used in channel unique ids.
pub(crate) fn epoch_secs(t: SystemTime) -> u64 {
    since_epoch(t).as_secs()
}

/// `2026-11-25T17:05:14.504+0000`: UTC, milliseconds, `+0000` as Asterisk
/// prints it with the machine in UTC.
pub(crate) fn ast_timestamp(t: SystemTime) -> String {
    let d = since_epoch(t);
    let secs = d.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+0000",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// `2026-11-25 16:53:01 UTC`, the build date format of `/asterisk/info`.
pub(crate) fn ast_build_date(t: SystemTime) -> String {
    let secs = epoch_secs(t);
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// AMI Ping's `Timestamp: <secs>.<micros>`.
pub(crate) fn ami_ping_timestamp(t: SystemTime) -> String {
    let d = since_epoch(t);
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_recording() {
        // 1795626314.504 is the uniqueid epoch of the ami-inbound recording,
        // whose creationtime reads 2026-11-25T17:05:14.504+0000.
        let t = UNIX_EPOCH + Duration::from_millis(1_795_626_314_504);
        assert_eq!(ast_timestamp(t), "2026-11-25T17:05:14.504+0000");
        assert_eq!(ast_build_date(t), "2026-11-25 17:05:14 UTC");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_626_314_000_042);
        assert_eq!(ami_ping_timestamp(t), "1795626314.000042");
    }

    #[test]
    fn leap_days_and_epoch() {
        assert_eq!(ast_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000+0000");
        // 2024-02-29T12:00:00Z
        let t = UNIX_EPOCH + Duration::from_secs(1_709_208_000);
        assert_eq!(ast_timestamp(t), "2024-02-29T12:00:00.000+0000");
    }
}
