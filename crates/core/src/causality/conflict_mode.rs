//! `ConflictMode`: a bucket's policy for concurrent writes (keep them as
//! siblings, or last writer wins). Only the name; `Object` applies it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictMode {
    /// Concurrent writes are all kept and returned to readers.
    #[default]
    Siblings,
    /// Only the version with the greatest (timestamp, dot) is kept; can drop
    /// concurrent writes.
    Lww,
}

impl ConflictMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictMode::Siblings => "siblings",
            ConflictMode::Lww => "lww",
        }
    }
}

impl fmt::Display for ConflictMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown conflict mode {given:?}: expected \"siblings\" or \"lww\"")]
pub struct UnknownConflictMode {
    pub given: String,
}

impl FromStr for ConflictMode {
    type Err = UnknownConflictMode;

    fn from_str(s: &str) -> Result<ConflictMode, UnknownConflictMode> {
        match s {
            "siblings" => Ok(ConflictMode::Siblings),
            "lww" => Ok(ConflictMode::Lww),
            _ => Err(UnknownConflictMode {
                given: s.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for mode in [ConflictMode::Siblings, ConflictMode::Lww] {
            assert_eq!(mode.as_str().parse::<ConflictMode>(), Ok(mode));
        }
        assert_eq!(ConflictMode::default(), ConflictMode::Siblings);
        assert!("LWW".parse::<ConflictMode>().is_err());
    }
}
