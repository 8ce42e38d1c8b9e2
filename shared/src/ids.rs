//! Identifiers both processes use: endpoints, tenants, sessions.
//!
//! Each is a newtype that can only hold a valid value (parse, don't
//! validate): [`EndpointId`] is assigned by the dataplane, [`TenantId`] and
//! [`SessionId`] come from the control plane. All three are strings on the
//! control socket; [`EndpointId`] is a bare `u64` on the media socket.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An endpoint: one RTP port pair on the dataplane, assigned by it.
///
/// Written `ep-` followed by the value in lowercase hex (`ep-1a2b`) in text:
/// JSON, logs, the CLI. Parsing accepts 1 to 16 hex digits in either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(pub u64);

/// A tenant: 1 to 64 characters of `A-Z a-z 0-9 _ . -`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct TenantId(String);

/// A call session as the control plane names it (usually the Asterisk
/// channel's unique id): 1 to 128 printable ASCII characters, no whitespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct SessionId(String);

/// Which kind of identifier failed to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// [`EndpointId`].
    Endpoint,
    /// [`TenantId`].
    Tenant,
    /// [`SessionId`].
    Session,
}

/// A string that is not a valid identifier of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidId {
    /// The empty string.
    Empty(IdKind),
    /// Longer than the kind allows.
    TooLong {
        /// Which identifier.
        kind: IdKind,
        /// Its length in bytes.
        len: usize,
        /// The most the kind allows.
        max: usize,
    },
    /// A character the kind does not allow.
    BadChar {
        /// Which identifier.
        kind: IdKind,
        /// The character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// Not `ep-` followed by 1 to 16 hex digits.
    BadEndpoint(String),
}

impl EndpointId {
    /// The prefix of the text form.
    pub const PREFIX: &'static str = "ep-";
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:x}", Self::PREFIX, self.0)
    }
}

impl FromStr for EndpointId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidId::BadEndpoint(s.to_owned());
        let hex = s.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u64::from_str_radix(hex, 16).map(Self).map_err(|_| bad())
    }
}

impl Serialize for EndpointId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EndpointId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EndpointVisitor;

        impl Visitor<'_> for EndpointVisitor {
            type Value = EndpointId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an endpoint id like \"ep-1a2b\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointId, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(EndpointVisitor)
    }
}

impl TenantId {
    /// The longest tenant id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    fn check(s: &str) -> Result<(), InvalidId> {
        check(IdKind::Tenant, s, Self::MAX_LEN, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
        })
    }
}

impl SessionId {
    /// The longest session id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    fn check(s: &str) -> Result<(), InvalidId> {
        check(IdKind::Session, s, Self::MAX_LEN, |c| c.is_ascii_graphic())
    }
}

/// The conversions and traits the two string ids share.
macro_rules! string_id {
    ($ty:ident) => {
        impl TryFrom<String> for $ty {
            type Error = InvalidId;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::check(&s)?;
                Ok(Self(s))
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = InvalidId;

            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::check(s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl FromStr for $ty {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::try_from(s)
            }
        }

        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

string_id!(TenantId);
string_id!(SessionId);

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Endpoint => "endpoint",
            Self::Tenant => "tenant",
            Self::Session => "session",
        })
    }
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty(kind) => write!(f, "invalid {kind} id: empty"),
            Self::TooLong { kind, len, max } => {
                write!(
                    f,
                    "invalid {kind} id: {len} bytes long, at most {max} allowed"
                )
            }
            Self::BadChar { kind, ch, at } => {
                let allowed = match kind {
                    IdKind::Tenant => "A-Z a-z 0-9 _ . -",
                    _ => "printable ASCII without spaces",
                };
                write!(
                    f,
                    "invalid {kind} id: character {ch:?} at byte {at} (allowed: {allowed})"
                )
            }
            Self::BadEndpoint(s) => write!(
                f,
                "invalid endpoint id {s:?}: expected \"ep-\" and 1 to 16 hex digits"
            ),
        }
    }
}

impl std::error::Error for InvalidId {}

fn check(
    kind: IdKind,
    s: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::Empty(kind));
    }
    if s.len() > max {
        return Err(InvalidId::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    match s.char_indices().find(|&(_, c)| !allowed(c)) {
        Some((at, ch)) => Err(InvalidId::BadChar { kind, ch, at }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_text_round_trips() {
        for v in [0, 1, 0x1a2b, u64::MAX] {
            let id = EndpointId(v);
            assert_eq!(id.to_string().parse::<EndpointId>(), Ok(id));
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(serde_json::from_str::<EndpointId>(&json).unwrap(), id);
        }
        assert_eq!(EndpointId(0x1a2b).to_string(), "ep-1a2b");
        assert_eq!("ep-1A2B".parse::<EndpointId>(), Ok(EndpointId(0x1a2b)));
    }

    #[test]
    fn endpoint_rejects_malformed() {
        for s in [
            "",
            "ep-",
            "1a2b",
            "ep-xyz",
            "ep-+1",
            "ep-00000000000000001",
            "EP-1",
        ] {
            assert!(s.parse::<EndpointId>().is_err(), "{s:?}");
        }
        let err = serde_json::from_str::<EndpointId>("5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("an endpoint id like"), "{err}");
    }

    #[test]
    fn tenant_validation() {
        assert!("acme-corp_1.eu".parse::<TenantId>().is_ok());
        assert_eq!(
            "".parse::<TenantId>(),
            Err(InvalidId::Empty(IdKind::Tenant))
        );
        assert!("a".repeat(64).parse::<TenantId>().is_ok());
        assert!(matches!(
            "a".repeat(65).parse::<TenantId>(),
            Err(InvalidId::TooLong {
                len: 65,
                max: 64,
                ..
            })
        ));
        assert_eq!(
            "ac me".parse::<TenantId>(),
            Err(InvalidId::BadChar {
                kind: IdKind::Tenant,
                ch: ' ',
                at: 2
            })
        );
        assert!("acmé".parse::<TenantId>().is_err());
        assert!("a/b".parse::<TenantId>().is_err());
    }

    #[test]
    fn session_validation() {
        assert!("1715000000.42".parse::<SessionId>().is_ok());
        assert!("PJSIP/alice-0000002a;1".parse::<SessionId>().is_ok());
        assert!("a".repeat(128).parse::<SessionId>().is_ok());
        assert!("a".repeat(129).parse::<SessionId>().is_err());
        for bad in ["", "a b", "a\tb", "a\u{7f}", "é"] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn string_ids_use_serde_try_from() {
        let t: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(t.as_str(), "acme");
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"acme\"");
        let err = serde_json::from_str::<TenantId>("\"a b\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid tenant id"), "{err}");
        let s: SessionId = serde_json::from_str("\"x-1\"").unwrap();
        assert_eq!(String::from(s), "x-1");
    }
}
