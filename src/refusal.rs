//! Why an envelope from a partner was not stored: one vocabulary for the
//! federation (which decides), the store (which records it) and the gRPC
//! edge (which maps it to a status in `rpc.rs`, and only there).

use crate::signing::VerifyError;

/// The kind of a refusal. Its [`RefusalKind::as_str`] is what the store
/// keeps in the `rejections` table and the ledger: stable, never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// The frame, path or content does not parse or validate.
    Malformed,
    /// The signature, origin, key id or key validity does not check out.
    Unauthentic,
    /// Signed by a key we do not know yet: the envelope waits in quarantine.
    UnknownKey,
    /// Our ingress policy for the sending partner refuses it.
    DeniedByRule,
    /// An older version than the one held (a rollback).
    Rollback,
    /// A version too far ahead of the one held.
    TooFarAhead,
    /// What the sending partner may make us keep is used up (its
    /// quarantine share).
    LimitReached,
    /// The origin signed different content under a version already held.
    ConflictingVersion,
    /// Dated more than the allowed skew ahead of our clock: only the time
    /// is wrong, so the envelope waits (in quarantine) until our clock
    /// reaches it. Recorded as a refusal only if it is never due.
    AheadOfClock,
}

impl RefusalKind {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Malformed => "malformed",
            RefusalKind::Unauthentic => "unauthentic",
            RefusalKind::UnknownKey => "unknown-key",
            RefusalKind::DeniedByRule => "denied-by-rule",
            RefusalKind::Rollback => "rollback",
            RefusalKind::TooFarAhead => "too-far-ahead",
            RefusalKind::LimitReached => "limit-reached",
            RefusalKind::ConflictingVersion => "conflicting-version",
            RefusalKind::AheadOfClock => "ahead-of-clock",
        }
    }

    /// Every kind.
    pub const ALL: [RefusalKind; 9] = [
        RefusalKind::Malformed,
        RefusalKind::Unauthentic,
        RefusalKind::UnknownKey,
        RefusalKind::DeniedByRule,
        RefusalKind::Rollback,
        RefusalKind::TooFarAhead,
        RefusalKind::LimitReached,
        RefusalKind::ConflictingVersion,
        RefusalKind::AheadOfClock,
    ];

    /// The kind named by [`RefusalKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A stored name that is not a [`RefusalKind`].
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a refusal kind")]
pub struct UnknownRefusalKind(String);

impl TryFrom<String> for RefusalKind {
    type Error = UnknownRefusalKind;
    fn try_from(s: String) -> Result<Self, UnknownRefusalKind> {
        Self::parse(&s).ok_or(UnknownRefusalKind(s))
    }
}

impl std::fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&VerifyError> for RefusalKind {
    fn from(e: &VerifyError) -> Self {
        match e {
            VerifyError::BadSignature { .. }
            | VerifyError::OriginMismatch { .. }
            | VerifyError::KeyIdMismatch { .. }
            | VerifyError::KeyNotValid { .. }
            | VerifyError::KeyRevoked { .. }
            | VerifyError::SignatureCount(_) => RefusalKind::Unauthentic,
            VerifyError::UnknownKey(_) => RefusalKind::UnknownKey,
            VerifyError::WrongPayloadType { .. }
            | VerifyError::TooLarge(..)
            | VerifyError::Decode(_) => RefusalKind::Malformed,
        }
    }
}

/// A refused envelope: what kind of refusal and why, naming the key, org or
/// field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The kind.
    pub kind: RefusalKind,
    /// Why, for the partner's and our operators.
    pub reason: String,
    /// The signing key to wait for ([`RefusalKind::UnknownKey`]), or that
    /// signed an envelope dated ahead of our clock
    /// ([`RefusalKind::AheadOfClock`]).
    pub key_id: Option<String>,
    /// For [`RefusalKind::AheadOfClock`]: when our clock accepts it.
    pub due_ms: Option<i64>,
}

/// What a refused envelope waits for, when waiting can cure it: it is held
/// in quarantine instead of being refused for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait<'a> {
    /// Its signing key, unknown yet.
    Key(&'a str),
    /// Our clock to reach `due_ms`; signed by `key_id` (known).
    Clock {
        /// The signing key.
        key_id: &'a str,
        /// When it becomes acceptable.
        due_ms: i64,
    },
}

impl Refusal {
    /// A refusal of `kind` for `reason`.
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
            key_id: None,
            due_ms: None,
        }
    }

    /// An envelope signed by `key_id`, dated ahead of our clock, which
    /// accepts it at `due_ms`.
    pub fn ahead_of_clock(key_id: &str, due_ms: i64, reason: impl Into<String>) -> Self {
        Self {
            key_id: Some(key_id.to_string()),
            due_ms: Some(due_ms),
            ..Self::new(RefusalKind::AheadOfClock, reason)
        }
    }

    /// What the envelope waits for, when its only problem is one time
    /// cures: its key is unknown, or it is dated ahead of our clock.
    pub fn waits(&self) -> Option<Wait<'_>> {
        let key_id = self.key_id.as_deref()?;
        match (self.kind, self.due_ms) {
            (RefusalKind::UnknownKey, _) => Some(Wait::Key(key_id)),
            (RefusalKind::AheadOfClock, Some(due_ms)) => Some(Wait::Clock { key_id, due_ms }),
            _ => None,
        }
    }
}

impl From<VerifyError> for Refusal {
    fn from(e: VerifyError) -> Self {
        Self {
            kind: RefusalKind::from(&e),
            reason: e.to_string(),
            key_id: match &e {
                VerifyError::UnknownKey(k) => Some(k.clone()),
                _ => None,
            },
            due_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in RefusalKind::ALL {
            assert_eq!(RefusalKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(RefusalKind::parse("Unauthenticated"), None);
    }
}
