//! Seeds derived by hashing, so that randomness depends on what is drawn, never on which thread
//! draws it or in what order.

/// splitmix64: a fast, well-mixed 64-bit hash.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for the item `parts` name under `seed` (e.g. epoch and position in the epoch).
pub fn derive(seed: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(seed, |z, &part| splitmix64(z ^ splitmix64(part)))
}
