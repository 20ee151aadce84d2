//! Passwords from the operating system's CSPRNG.

/// Length of generated passwords: 32 characters of 62 give about 190 bits.
pub const LENGTH: usize = 32;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A new random alphanumeric password (no characters that need quoting in
/// URIs, shells or connection strings).
pub fn generate() -> String {
    let mut out = String::with_capacity(LENGTH);
    let mut buf = [0u8; 64];
    while out.len() < LENGTH {
        getrandom::fill(&mut buf).expect("the OS random source is available");
        // Rejection sampling keeps every character equally likely.
        for b in buf {
            if (b as usize) < 248 && out.len() < LENGTH {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    out
}

/// A fingerprint of `password`, salted with `salt` (the claim's UID): the
/// first 128 bits of SHA-256, in hex. It tells whether a Secret still holds
/// the password dbps issued without keeping the password anywhere else.
pub fn fingerprint(salt: &str, password: &str) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"dbps-fingerprint\0");
    context.update(salt.as_bytes());
    context.update(b"\0");
    context.update(password.as_bytes());
    context.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_passwords_apart_without_showing_them() {
        let pw = generate();
        let f = fingerprint("uid-1", &pw);
        assert_eq!(f.len(), 32);
        assert_eq!(f, fingerprint("uid-1", &pw));
        assert_ne!(f, fingerprint("uid-2", &pw), "salted");
        assert_ne!(f, fingerprint("uid-1", "weak"));
        assert!(!f.contains(&pw));
    }

    #[test]
    fn passwords_are_long_alphanumeric_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), LENGTH);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
