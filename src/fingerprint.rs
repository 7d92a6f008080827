//! FNV-1a, 64 bits: a cheap, stable fingerprint of bytes, the same on
//! every instance and every build (unlike std's hasher, whose keys and
//! algorithm may change). For comparisons, never for security: entries
//! applied at one index, a job folder's listing, where a job's placement
//! ties start.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// A fingerprint fed piece by piece.
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(OFFSET)
    }
}

impl Fnv {
    pub fn eat(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(PRIME);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The fingerprint of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut f = Fnv::default();
    f.eat(bytes);
    f.finish()
}

#[cfg(test)]
mod tests {
    /// The published FNV-1a test vectors: the value must never change, as
    /// replicas and stored job folders compare it.
    #[test]
    fn known_values() {
        assert_eq!(super::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
