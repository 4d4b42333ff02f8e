//! Pauses: a 401 stops everything (the key is wrong for every request), a 402 stops new
//! jobs (status polls of running ones go on). While paused, one request is let through every
//! `pause.probe_interval` as a probe; any answer that proves the key or the credits good
//! lifts the pause. Pauses live in the database so a restart keeps them and
//! `importlyd resume` can lift them from another process.

use std::time::{Duration, SystemTime};

use crate::store::StoredPause;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// 401: no request at all.
    All,
    /// 402 on imports: no new import jobs.
    Import,
    /// 402 on metadata: no new metadata jobs.
    Metadata,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Import => "import",
            Scope::Metadata => "metadata",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Scope> {
        match s {
            "all" => Some(Scope::All),
            "import" => Some(Scope::Import),
            "metadata" => Some(Scope::Metadata),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pause {
    pub scope: Scope,
    pub reason: String,
    pub http_status: Option<u16>,
    pub since: SystemTime,
    pub next_probe: SystemTime,
}

impl Pause {
    pub fn to_stored(&self) -> StoredPause {
        StoredPause {
            scope: self.scope,
            reason: self.reason.clone(),
            http_status: self.http_status.map(i64::from),
            since: self.since,
            next_probe: self.next_probe,
        }
    }

    fn from_stored(p: &StoredPause) -> Pause {
        Pause {
            scope: p.scope,
            reason: p.reason.clone(),
            http_status: p.http_status.and_then(|s| u16::try_from(s).ok()),
            since: p.since,
            next_probe: p.next_probe,
        }
    }
}

/// May a request go?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Paused, but a probe is due: exactly one request may go.
    Probe(Scope),
    Closed {
        until: SystemTime,
    },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pauses {
    list: Vec<Pause>,
}

impl Pauses {
    /// Replaces the in-memory view with what the database holds (the truth: `resume`
    /// deletes rows there).
    pub fn load(&mut self, stored: &[StoredPause]) {
        self.list = stored.iter().map(Pause::from_stored).collect();
    }

    pub fn get(&self, scope: Scope) -> Option<&Pause> {
        self.list.iter().find(|p| p.scope == scope)
    }

    pub fn all(&self) -> &[Pause] {
        &self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The gate for a new job of `kind` (`Import` or `Metadata`).
    pub fn submit_gate(&self, kind: Scope, now: SystemTime) -> Gate {
        self.gate(&[Scope::All, kind], now)
    }

    /// The gate for a status poll: only a 401 stops polling.
    pub fn poll_gate(&self, now: SystemTime) -> Gate {
        self.gate(&[Scope::All], now)
    }

    fn gate(&self, scopes: &[Scope], now: SystemTime) -> Gate {
        let mut gate = Gate::Open;
        for p in self.list.iter().filter(|p| scopes.contains(&p.scope)) {
            gate = if p.next_probe <= now {
                match gate {
                    Gate::Closed { .. } => gate,
                    _ => Gate::Probe(p.scope),
                }
            } else {
                match gate {
                    Gate::Closed { until } => Gate::Closed {
                        until: until.min(p.next_probe),
                    },
                    _ => Gate::Closed {
                        until: p.next_probe,
                    },
                }
            };
        }
        gate
    }

    /// Starts (or refreshes) a pause; returns it for the caller to persist.
    pub fn pause(
        &mut self,
        scope: Scope,
        reason: String,
        http_status: u16,
        now: SystemTime,
        probe_interval: Duration,
    ) -> Pause {
        let since = self.get(scope).map_or(now, |p| p.since);
        let p = Pause {
            scope,
            reason,
            http_status: Some(http_status),
            since,
            next_probe: now + probe_interval,
        };
        self.list.retain(|q| q.scope != scope);
        self.list.push(p.clone());
        p
    }

    /// A probe went out through the gates of `scopes` (a submit passes the key's and its
    /// kind's, a status poll the key's only): every due pause among them counts as probed
    /// by it and waits a whole interval for the next, so one request never becomes two
    /// probes. Returns the pauses changed, for the caller to persist.
    pub fn probed(
        &mut self,
        scopes: &[Scope],
        now: SystemTime,
        probe_interval: Duration,
    ) -> Vec<Pause> {
        let mut changed = Vec::new();
        for p in &mut self.list {
            if scopes.contains(&p.scope) && p.next_probe <= now {
                p.next_probe = now + probe_interval;
                changed.push(p.clone());
            }
        }
        changed
    }

    /// Lifts `scope`'s pause on evidence from a request sent at `sent_at`; true if one was
    /// lifted. Only a request sent after the pause began counts: a submit already in flight
    /// when a 402 came back (sent while the last credit was still there) must not lift the
    /// pause that 402 just set. `since` is stored with millisecond precision, hence the
    /// millisecond of slack.
    pub fn lift(&mut self, scope: Scope, sent_at: SystemTime) -> bool {
        let before = self.list.len();
        self.list
            .retain(|p| p.scope != scope || sent_at + Duration::from_millis(1) < p.since);
        before != self.list.len()
    }

    /// Makes every pause probe at once (SIGHUP: the key may have been fixed).
    pub fn probe_now(&mut self, now: SystemTime) -> Vec<Pause> {
        for p in &mut self.list {
            p.next_probe = now;
        }
        self.list.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn unauthorized_closes_everything_credits_only_submits() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        let iv = Duration::from_secs(300);
        let mut p = Pauses::default();
        p.pause(Scope::Import, "402".into(), 402, t0, iv);
        assert_eq!(p.poll_gate(t0), Gate::Open);
        assert!(matches!(
            p.submit_gate(Scope::Import, t0),
            Gate::Closed { .. }
        ));
        assert_eq!(p.submit_gate(Scope::Metadata, t0), Gate::Open);
        assert_eq!(
            p.submit_gate(Scope::Import, t0 + iv),
            Gate::Probe(Scope::Import)
        );
        p.pause(Scope::All, "401".into(), 401, t0, iv);
        assert!(matches!(p.poll_gate(t0), Gate::Closed { .. }));
        // An answer to a request sent before the pause is no evidence.
        assert!(!p.lift(Scope::All, t0 - Duration::from_secs(1)));
        assert!(matches!(p.poll_gate(t0), Gate::Closed { .. }));
        assert!(p.lift(Scope::All, t0));
        assert_eq!(p.poll_gate(t0), Gate::Open);
    }

    #[test]
    fn with_a_401_and_a_402_due_one_probe_goes_not_two() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        let iv = Duration::from_secs(300);
        let mut p = Pauses::default();
        p.pause(Scope::All, "401".into(), 401, t0, iv);
        p.pause(Scope::Import, "402".into(), 402, t0, iv);
        let due = t0 + iv;
        let Gate::Probe(scope) = p.submit_gate(Scope::Import, due) else {
            panic!("a probe is due");
        };
        // The submit passes the key's gate and its own, as the scheduler says.
        let changed = p.probed(&[Scope::All, scope], due, iv);
        assert_eq!(changed.len(), 2, "{changed:?}");
        // The submit probed the key too: no status poll goes out as a second probe, and no
        // second submit.
        assert!(matches!(p.poll_gate(due), Gate::Closed { .. }));
        assert!(matches!(
            p.submit_gate(Scope::Import, due),
            Gate::Closed { .. }
        ));
        // A status poll probes only the key: the 402 stays due for a submit once the key
        // is known good.
        let mut q = Pauses::default();
        q.pause(Scope::Import, "402".into(), 402, t0, iv);
        q.pause(Scope::All, "401".into(), 401, t0, iv);
        assert_eq!(q.poll_gate(due), Gate::Probe(Scope::All));
        assert_eq!(q.probed(&[Scope::All], due, iv).len(), 1);
    }
}
