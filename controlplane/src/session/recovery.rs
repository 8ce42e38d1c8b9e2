//! Recovery after a control-plane restart, as a plan: which of this host's
//! sessions still live, which must get their media rebuilt, which are gone,
//! and which dataplane endpoints nobody uses any more.
//!
//! Sans-IO: [`plan`] takes the live sessions this host owns (from
//! [`SessionStore::list_host`](super::SessionStore::list_host)) and what
//! was observed of the dataplane (its endpoint list) and of each Asterisk
//! (ARI's channel list), and returns decisions. Carrying them out (ARI
//! hangups, endpoint releases, store updates, events) is the call flow's
//! job. A part that could not be asked is *unknown*, never *empty*: the
//! sessions that depend on it are left for a later look rather than
//! ended, so a dataplane or Asterisk that is slow to come back does not
//! cost live calls.
//!
//! Left out: adopting channels that entered Stasis while the control
//! plane was down (they arrive as fresh `StasisStart` replays or are found
//! by the call flow), and recognising stray externalMedia channels not
//! recorded in any session (their ids look like any other channel's).

use std::collections::{BTreeMap, BTreeSet};

use mediagw_shared::ids::{EndpointId, SessionId, TenantId};

use super::model::{Session, SessionState};

/// What was seen of the outside after the restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The dataplane's endpoints; `None` when it could not be asked.
    pub endpoints: Option<BTreeSet<EndpointId>>,
    /// Per Asterisk server (its name in configuration): the channel ids ARI
    /// lists. A server missing here could not be asked.
    pub channels: BTreeMap<String, BTreeSet<String>>,
}

/// What to do with one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The call and its media path are intact: follow it again.
    Keep,
    /// The caller's channel lives but the media path is missing or was
    /// half built: release what remains of it (see the decision) and set
    /// media up again from the session's state.
    Resume,
    /// The call is gone, or was being torn down: release what remains and
    /// finish the session with the given reason.
    End {
        /// Why (`"channel gone"`, ...), for the session's `end_reason`.
        reason: &'static str,
    },
    /// Cannot tell yet: its Asterisk or the dataplane did not answer. Look
    /// again later; touch it meanwhile so it is not reaped.
    Unknown,
}

/// One session's decision and the clean-up it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The session's tenant.
    pub tenant: TenantId,
    /// The session.
    pub session: SessionId,
    /// What to do.
    pub verdict: Verdict,
    /// An endpoint of the session to release on the dataplane first.
    pub release_endpoint: Option<EndpointId>,
    /// ARI channels of the session (on its Asterisk) to hang up first.
    pub hangup_channels: Vec<String>,
}

/// The whole plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// One decision per live session given, in the order given.
    pub decisions: Vec<Decision>,
    /// Dataplane endpoints no session refers to: release them.
    pub orphan_endpoints: Vec<EndpointId>,
}

/// Plans recovery for `sessions` (this host's live sessions; ended ones
/// are skipped) against what was `observed`.
pub fn plan(sessions: &[Session], observed: &Observed) -> Plan {
    let mut decisions = Vec::with_capacity(sessions.len());
    let mut referenced = BTreeSet::new();
    for s in sessions.iter().filter(|s| s.is_live()) {
        referenced.extend(s.endpoint);
        decisions.push(decide(s, observed));
    }
    let orphan_endpoints = observed
        .endpoints
        .iter()
        .flatten()
        .filter(|e| !referenced.contains(*e))
        .copied()
        .collect();
    Plan {
        decisions,
        orphan_endpoints,
    }
}

fn decide(s: &Session, observed: &Observed) -> Decision {
    let mut d = Decision {
        tenant: s.tenant.clone(),
        session: s.id.clone(),
        verdict: Verdict::Unknown,
        release_endpoint: None,
        hangup_channels: Vec::new(),
    };
    let (Some(server), Some(channel)) = (&s.asterisk, &s.channel) else {
        // Without its Asterisk and channel nothing can be checked or
        // cleaned up on the Asterisk side; only the endpoint can go.
        d.verdict = Verdict::End {
            reason: "no channel recorded",
        };
        d.release_endpoint = s.endpoint;
        return d;
    };
    let Some(channels) = observed.channels.get(server) else {
        return d;
    };
    // Whether the endpoint is there: None when the dataplane is unknown.
    let endpoint_alive = |e: EndpointId| observed.endpoints.as_ref().map(|set| set.contains(&e));
    let external_alive = s
        .external_channel
        .as_ref()
        .filter(|c| channels.contains(*c));
    let caller_alive = channels.contains(channel);

    // Tear down what remains of the media path (and, when ending on our
    // decision, the caller's channel).
    let clean_up = |d: &mut Decision, hang_up_caller: bool| {
        d.release_endpoint = s.endpoint.filter(|e| endpoint_alive(*e) != Some(false));
        d.hangup_channels.extend(external_alive.cloned());
        if hang_up_caller && caller_alive {
            d.hangup_channels.push(channel.clone());
        }
    };

    if !caller_alive {
        d.verdict = Verdict::End {
            reason: "channel gone",
        };
        clean_up(&mut d, false);
        return d;
    }
    match s.state() {
        SessionState::Ending => {
            d.verdict = Verdict::End {
                reason: "ending when the control plane restarted",
            };
            clean_up(&mut d, true);
        }
        SessionState::Active => {
            let endpoint = s.endpoint.map(endpoint_alive);
            let external_ok = s.external_channel.is_none() || external_alive.is_some();
            match endpoint {
                Some(None) => {} // dataplane unknown: Unknown
                Some(Some(true)) if external_ok => d.verdict = Verdict::Keep,
                _ => {
                    d.verdict = Verdict::Resume;
                    clean_up(&mut d, false);
                }
            }
        }
        SessionState::New | SessionState::Answered | SessionState::MediaConnecting => {
            if s.endpoint.is_some() && observed.endpoints.is_none() {
                return d; // cannot release safely yet: Unknown
            }
            d.verdict = Verdict::Resume;
            clean_up(&mut d, false);
        }
        SessionState::Ended | SessionState::Failed => {
            // Filtered out by `plan`; ended sessions need nothing.
            d.verdict = Verdict::End { reason: "ended" };
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::model::{Direction, UnixMs};

    fn session(id: &str, state: SessionState, ep: Option<u64>) -> Session {
        let mut s = Session::new(
            "acme".parse().unwrap(),
            id.parse().unwrap(),
            "gw-1",
            Direction::Inbound,
            UnixMs(1),
        );
        s.asterisk = Some("pbx-a".into());
        s.channel = Some(format!("{id}-caller"));
        s.endpoint = ep.map(EndpointId);
        if ep.is_some() {
            s.external_channel = Some(format!("{id}-ext"));
        }
        let path: &[SessionState] = match state {
            SessionState::New => &[],
            SessionState::Answered => &[SessionState::Answered],
            SessionState::MediaConnecting => &[SessionState::MediaConnecting],
            SessionState::Active => &[SessionState::MediaConnecting, SessionState::Active],
            SessionState::Ending => &[SessionState::Ending],
            SessionState::Ended => &[SessionState::Ended],
            SessionState::Failed => &[SessionState::Failed],
        };
        for (i, st) in path.iter().enumerate() {
            s.transition(*st, UnixMs(2 + i as u64)).unwrap();
        }
        s
    }

    fn observed(eps: &[u64], channels: &[&str]) -> Observed {
        Observed {
            endpoints: Some(eps.iter().copied().map(EndpointId).collect()),
            channels: BTreeMap::from([(
                "pbx-a".to_owned(),
                channels.iter().map(|c| (*c).to_owned()).collect(),
            )]),
        }
    }

    #[test]
    fn intact_calls_are_kept_and_gone_ones_ended() {
        let sessions = [
            session("a", SessionState::Active, Some(1)),
            session("b", SessionState::Active, Some(2)),
        ];
        let obs = observed(&[1, 2, 9], &["a-caller", "a-ext", "b-ext"]);
        let p = plan(&sessions, &obs);
        assert_eq!(p.decisions[0].verdict, Verdict::Keep);
        assert_eq!(p.decisions[0].release_endpoint, None);
        let b = &p.decisions[1];
        assert_eq!(
            b.verdict,
            Verdict::End {
                reason: "channel gone"
            }
        );
        assert_eq!(b.release_endpoint, Some(EndpointId(2)));
        assert_eq!(b.hangup_channels, ["b-ext"]);
        assert_eq!(p.orphan_endpoints, [EndpointId(9)]);
    }

    #[test]
    fn a_restarted_dataplane_means_resume_not_end() {
        let sessions = [session("a", SessionState::Active, Some(1))];
        let p = plan(&sessions, &observed(&[], &["a-caller", "a-ext"]));
        let d = &p.decisions[0];
        assert_eq!(d.verdict, Verdict::Resume);
        assert_eq!(d.release_endpoint, None);
        assert_eq!(d.hangup_channels, ["a-ext"]);
    }

    #[test]
    fn unknown_parts_keep_calls_waiting() {
        let sessions = [
            session("a", SessionState::Active, Some(1)),
            session("m", SessionState::MediaConnecting, Some(3)),
        ];
        let mut obs = observed(&[], &["a-caller", "a-ext", "m-caller"]);
        obs.endpoints = None;
        let p = plan(&sessions, &obs);
        assert!(p.decisions.iter().all(|d| d.verdict == Verdict::Unknown));
        assert!(p.orphan_endpoints.is_empty());
        obs.channels.clear();
        obs.endpoints = Some(BTreeSet::new());
        let p = plan(&sessions, &obs);
        assert!(p.decisions.iter().all(|d| d.verdict == Verdict::Unknown));
    }

    #[test]
    fn interrupted_setup_and_teardown() {
        let sessions = [
            session("n", SessionState::New, None),
            session("m", SessionState::MediaConnecting, Some(4)),
            session("e", SessionState::Ending, Some(5)),
            session("x", SessionState::Ended, Some(6)),
        ];
        let obs = observed(&[4, 5, 6], &["n-caller", "m-caller", "e-caller", "e-ext"]);
        let p = plan(&sessions, &obs);
        assert_eq!(p.decisions.len(), 3, "ended sessions are skipped");
        assert_eq!(p.decisions[0].verdict, Verdict::Resume);
        assert_eq!(p.decisions[0].release_endpoint, None);
        assert_eq!(p.decisions[1].verdict, Verdict::Resume);
        assert_eq!(p.decisions[1].release_endpoint, Some(EndpointId(4)));
        let e = &p.decisions[2];
        assert!(matches!(e.verdict, Verdict::End { .. }));
        assert_eq!(e.release_endpoint, Some(EndpointId(5)));
        assert_eq!(e.hangup_channels, ["e-ext", "e-caller"]);
        // The ended session's endpoint is nobody's: an orphan.
        assert_eq!(p.orphan_endpoints, [EndpointId(6)]);
    }
}
