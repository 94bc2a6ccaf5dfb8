//! Peer authentication with a cluster secret, as Erlang's distribution
//! cookie does for Riak: a mutual challenge-response before the first
//! frame. Both ends prove that they know the secret without sending it;
//! neither proof can be replayed (each side's nonce is fresh) or reflected
//! (the two proofs are keyed differently).
//!
//! ```text
//! acceptor  → connector  MAGIC ‖ nonce_a                       (CHALLENGE_BYTES)
//! connector → acceptor   nonce_c ‖ mac("connector", nonce_a, nonce_c)  (PROOF_BYTES)
//! acceptor  → connector  mac("acceptor", nonce_a, nonce_c)             (ANSWER_BYTES)
//! ```
//!
//! `mac` is BLAKE3 in keyed mode under a key derived from the secret. It
//! authenticates the two ends when the connection opens; it does not
//! encrypt or sign the frames that follow (as with Erlang cookies): keep
//! the peer port on a private network.

use std::fmt;

pub const NONCE_BYTES: usize = 32;
const MAC_BYTES: usize = 32;
/// Sent first by the acceptor, so that a connector can tell an
/// authenticating node from one that expects frames at once.
pub const MAGIC: &[u8; 8] = b"RKAUTH1\n";
pub const CHALLENGE_BYTES: usize = MAGIC.len() + NONCE_BYTES;
pub const PROOF_BYTES: usize = NONCE_BYTES + MAC_BYTES;
pub const ANSWER_BYTES: usize = MAC_BYTES;
/// The shortest secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;
/// The shortest client password accepted.
pub const MIN_PASSWORD_BYTES: usize = 8;

pub type Nonce = [u8; NONCE_BYTES];

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the peer sent no authentication challenge (does it have a cluster secret?)")]
    NoChallenge,
    #[error("the peer's proof does not match this node's cluster secret")]
    WrongSecret,
    #[error("the peer sent no whole proof in time")]
    NoProof,
    #[error("the peer did not answer the proof in time")]
    NoAnswer,
    #[error("a cluster secret must be at least {MIN_SECRET_BYTES} bytes, not {0}")]
    SecretTooShort(usize),
    #[error("a client password must be at least {MIN_PASSWORD_BYTES} bytes, not {0}")]
    PasswordTooShort(usize),
}

/// The key both ends derive from the cluster secret.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// The key of a secret (leading and trailing white space ignored, so
    /// that a trailing newline in a secret file does not matter).
    pub fn from_secret(secret: &[u8]) -> Result<ClusterKey, AuthError> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthError::SecretTooShort(secret.len()));
        }
        Ok(ClusterKey(blake3::derive_key(
            "ringkv 2026-11 peer authentication",
            secret,
        )))
    }

    fn mac(&self, role: &[u8], acceptor: &Nonce, connector: &Nonce) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(role);
        hasher.update(acceptor);
        hasher.update(connector);
        hasher.finalize()
    }

    /// The acceptor's first message.
    pub fn challenge(acceptor: &Nonce) -> [u8; CHALLENGE_BYTES] {
        let mut out = [0; CHALLENGE_BYTES];
        out[..MAGIC.len()].copy_from_slice(MAGIC);
        out[MAGIC.len()..].copy_from_slice(acceptor);
        out
    }

    /// The connector reads the challenge and proves it knows the secret.
    pub fn prove(
        &self,
        challenge: &[u8; CHALLENGE_BYTES],
        connector: &Nonce,
    ) -> Result<[u8; PROOF_BYTES], AuthError> {
        let (magic, acceptor) = challenge.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(AuthError::NoChallenge);
        }
        let acceptor: &Nonce = acceptor.try_into().expect("challenge length");
        let mut out = [0; PROOF_BYTES];
        out[..NONCE_BYTES].copy_from_slice(connector);
        out[NONCE_BYTES..].copy_from_slice(self.mac(b"connector", acceptor, connector).as_bytes());
        Ok(out)
    }

    /// The acceptor checks the connector's proof (in constant time) and
    /// answers with its own.
    pub fn answer(
        &self,
        acceptor: &Nonce,
        proof: &[u8; PROOF_BYTES],
    ) -> Result<[u8; ANSWER_BYTES], AuthError> {
        let (connector, mac) = proof.split_at(NONCE_BYTES);
        let connector: &Nonce = connector.try_into().expect("proof length");
        let mac: [u8; MAC_BYTES] = mac.try_into().expect("proof length");
        if self.mac(b"connector", acceptor, connector) != blake3::Hash::from_bytes(mac) {
            return Err(AuthError::WrongSecret);
        }
        Ok(*self.mac(b"acceptor", acceptor, connector).as_bytes())
    }

    /// The connector checks the acceptor's answer (in constant time).
    pub fn check_answer(
        &self,
        challenge: &[u8; CHALLENGE_BYTES],
        connector: &Nonce,
        answer: &[u8; ANSWER_BYTES],
    ) -> Result<(), AuthError> {
        let acceptor: &Nonce = challenge[MAGIC.len()..]
            .try_into()
            .expect("challenge length");
        if self.mac(b"acceptor", acceptor, connector) != blake3::Hash::from_bytes(*answer) {
            return Err(AuthError::WrongSecret);
        }
        Ok(())
    }
}

/// A client password (`--client-password-file`), kept as its hash so that
/// a candidate is compared in constant time.
#[derive(Clone)]
pub struct Password(blake3::Hash);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    /// Leading and trailing white space is ignored, as for the secret.
    pub fn new(password: &[u8]) -> Result<Password, AuthError> {
        let password = password.trim_ascii();
        if password.len() < MIN_PASSWORD_BYTES {
            return Err(AuthError::PasswordTooShort(password.len()));
        }
        Ok(Password(blake3::hash(password)))
    }

    pub fn matches(&self, candidate: &[u8]) -> bool {
        blake3::hash(candidate) == self.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(secret: &str) -> ClusterKey {
        ClusterKey::from_secret(secret.as_bytes()).unwrap()
    }

    /// The whole exchange between a connector holding `c` and an acceptor
    /// holding `a`: what each end concludes.
    fn exchange(c: &ClusterKey, a: &ClusterKey) -> (Result<(), AuthError>, Result<(), AuthError>) {
        let (acceptor_nonce, connector_nonce) = ([7; 32], [9; 32]);
        let challenge = ClusterKey::challenge(&acceptor_nonce);
        let proof = c.prove(&challenge, &connector_nonce).unwrap();
        match a.answer(&acceptor_nonce, &proof) {
            Ok(answer) => (
                c.check_answer(&challenge, &connector_nonce, &answer),
                Ok(()),
            ),
            Err(e) => (Err(e), Err(e)),
        }
    }

    #[test]
    fn the_same_secret_passes_both_ways_and_another_fails() {
        let secret = "correct horse battery staple";
        assert_eq!(exchange(&key(secret), &key(secret)), (Ok(()), Ok(())));
        // A trailing newline (a secret file) is the same secret.
        assert_eq!(
            exchange(&key(secret), &key(&format!("{secret}\n"))),
            (Ok(()), Ok(()))
        );
        let other = key("correct horse battery stapler");
        assert_eq!(
            exchange(&other, &key(secret)).1,
            Err(AuthError::WrongSecret)
        );
    }

    #[test]
    fn short_secrets_and_missing_challenges_are_refused() {
        assert_eq!(
            ClusterKey::from_secret(b"  short  \n").unwrap_err(),
            AuthError::SecretTooShort(5)
        );
        // A node without a secret sends frames, not a challenge.
        let mut not_a_challenge = [0u8; CHALLENGE_BYTES];
        not_a_challenge[..4].copy_from_slice(&[0, 0, 0, 12]);
        assert_eq!(
            key("0123456789abcdef").prove(&not_a_challenge, &[1; 32]),
            Err(AuthError::NoChallenge)
        );
    }

    #[test]
    fn a_password_matches_itself_only() {
        let password = Password::new(b"hunter22\n").unwrap();
        assert!(password.matches(b"hunter22"));
        assert!(!password.matches(b"hunter2"));
        assert!(!password.matches(b"hunter22\n"));
        assert_eq!(
            Password::new(b"short").unwrap_err(),
            AuthError::PasswordTooShort(5)
        );
    }

    #[test]
    fn a_proof_cannot_be_reflected_as_an_answer() {
        // An impostor acceptor replays the connector's own proof as the
        // answer: the two are keyed differently.
        let k = key("0123456789abcdef");
        let challenge = ClusterKey::challenge(&[3; 32]);
        let proof = k.prove(&challenge, &[4; 32]).unwrap();
        let reflected: [u8; ANSWER_BYTES] = proof[NONCE_BYTES..].try_into().unwrap();
        assert_eq!(
            k.check_answer(&challenge, &[4; 32], &reflected),
            Err(AuthError::WrongSecret)
        );
    }

    proptest! {
        /// Whatever a peer without the secret sends fails, and never panics.
        #[test]
        fn forged_proofs_fail(proof in prop::array::uniform32(any::<u8>()), mac in prop::array::uniform32(any::<u8>()), acceptor in prop::array::uniform32(any::<u8>())) {
            let mut forged = [0u8; PROOF_BYTES];
            forged[..NONCE_BYTES].copy_from_slice(&proof);
            forged[NONCE_BYTES..].copy_from_slice(&mac);
            prop_assert_eq!(key("0123456789abcdef").answer(&acceptor, &forged), Err(AuthError::WrongSecret));
        }

        /// A proof made for one challenge does not pass another.
        #[test]
        fn proofs_do_not_replay(a in prop::array::uniform32(any::<u8>()), b in prop::array::uniform32(any::<u8>())) {
            prop_assume!(a != b);
            let k = key("0123456789abcdef");
            let proof = k.prove(&ClusterKey::challenge(&a), &[5; 32]).unwrap();
            prop_assert_eq!(k.answer(&b, &proof), Err(AuthError::WrongSecret));
        }
    }
}
