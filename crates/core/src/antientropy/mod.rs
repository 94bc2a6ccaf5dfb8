//! placeholder: Merkle trees for active anti-entropy (being written).
