//! The seeded runner, the allocation guard and the input generators the
//! targets share.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

pub use rand::rngs::StdRng as Rng;
use rand::{Rng as _, SeedableRng};

/// Largest single allocation any case may make. The largest legitimate one
/// is a script worker's frame buffer (`FRAME_BYTES_MAX`, 16 MiB); a decoder
/// that sized a buffer from a declared length asks for far more.
pub const ALLOC_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Most CPU time a case may take (debug build): a slow case is a decoder
/// doing work out of proportion to its input. CPU time of the case's own
/// thread, not wall time: a busy or paused machine must not fail a case.
const CASE_CPU_MS_MAX: u64 = 5_000;

/// Refuses an allocation over `ALLOC_BYTES_MAX`: writes its size and the
/// case's seed (without allocating) and aborts, since an allocation cannot
/// fail softly.
struct Guard;

thread_local! {
    /// The seed of the case this thread runs (0: none).
    static CASE_SEED: Cell<u64> = const { Cell::new(0) };
}

fn refuse(size: usize) -> ! {
    let seed = CASE_SEED.try_with(Cell::get).unwrap_or(0);
    let mut buf = [0u8; 160];
    let mut out = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(
        out,
        "\nfuzz: an allocation of {size} bytes (over ALLOC_BYTES_MAX) in the case of seed {seed}; replay with CLARO_FUZZ_SEED={seed}\n"
    );
    let len = out.position() as usize;
    // SAFETY: writes `len` initialised bytes of `buf` to stderr.
    unsafe { libc::write(2, buf.as_ptr().cast(), len) };
    std::process::abort()
}

// SAFETY: forwards to `System` unchanged, only refusing oversized requests.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_BYTES_MAX {
            refuse(layout.size());
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_BYTES_MAX {
            refuse(layout.size());
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_BYTES_MAX {
            refuse(new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GUARD: Guard = Guard;

/// How long each target runs: `CLARO_FUZZ_S` seconds, else its own count.
fn budget_s() -> Option<u64> {
    let text = std::env::var("CLARO_FUZZ_S").ok()?;
    Some(text.parse().expect("CLARO_FUZZ_S is a number of seconds"))
}

fn replay_seed() -> Option<u64> {
    let text = std::env::var("CLARO_FUZZ_SEED").ok()?;
    Some(text.parse().expect("CLARO_FUZZ_SEED is a number"))
}

/// The seed of case `i` of `target`: a mix of both, so that targets and
/// cases draw unrelated inputs.
fn case_seed(target: &str, i: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs `check` on inputs made by `make`: `cases` of them (or for
/// `CLARO_FUZZ_S` seconds, or the one of `CLARO_FUZZ_SEED`). A failing case
/// panics naming the target, the seed and the input.
pub fn run<I: fmt::Debug>(
    target: &str,
    cases: u64,
    make: impl Fn(&mut Rng) -> I,
    check: impl Fn(&I),
) {
    if let Some(seed) = replay_seed() {
        return run_case(target, seed, &make, &check);
    }
    let deadline = budget_s().map(|s| Instant::now() + Duration::from_secs(s));
    let mut i = 0;
    while deadline.map_or(i < cases, |d| Instant::now() < d) {
        run_case(target, case_seed(target, i), &make, &check);
        i += 1;
    }
}

fn run_case<I: fmt::Debug>(
    target: &str,
    seed: u64,
    make: &impl Fn(&mut Rng) -> I,
    check: &impl Fn(&I),
) {
    let input = make(&mut Rng::seed_from_u64(seed));
    CASE_SEED.with(|c| c.set(seed));
    let started_ms = thread_cpu_ms();
    let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
    CASE_SEED.with(|c| c.set(0));
    let took_ms = thread_cpu_ms() - started_ms;
    let replay = format!("replay: CLARO_FUZZ_SEED={seed} cargo test --test fuzz {target}");
    if let Err(e) = outcome {
        let why = e
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| e.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        panic!("fuzz target {target}, seed {seed}: {why}\ninput: {input:?}\n{replay}");
    }
    assert!(
        took_ms <= CASE_CPU_MS_MAX,
        "fuzz target {target}, seed {seed}: took {took_ms} ms of CPU (CASE_CPU_MS_MAX {CASE_CPU_MS_MAX})\ninput: {input:?}\n{replay}"
    );
}

/// CPU time this thread has used.
fn thread_cpu_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000 + ts.tv_nsec as u64 / 1_000_000
}

/// Bytes shown as hex (and as text where they are printable) on failure.
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        write!(
            f,
            "{} bytes: {hex} ({:?})",
            self.0.len(),
            String::from_utf8_lossy(&self.0)
        )
    }
}

// ---------------------------------------------------------------------------
// Generators

pub fn random_bytes(rng: &mut Rng, len_max: usize) -> Vec<u8> {
    let len = rng.gen_range(0..=len_max);
    (0..len).map(|_| rng.gen()).collect()
}

/// Characters that break naive handling: separators, dots, NUL, line
/// ends, quotes, braces, percent signs, multi-byte and invisible ones.
const NASTY: [&str; 22] = [
    "/", ".", "..", "\0", "\n", "\r", "\"", "'", "\\", "{", "}", "%", "%ff", "$(x)", "é", "😀",
    "\u{fffd}", "\u{202e}", " ", "-", "*", "[",
];

/// A random string: mostly short, sometimes long, mixing plain letters
/// with [`NASTY`] pieces.
pub fn text(rng: &mut Rng) -> String {
    let parts = match rng.gen_range(0..10) {
        0 => 0,
        1 => rng.gen_range(100..2_000),
        _ => rng.gen_range(1..12),
    };
    let mut s = String::new();
    for _ in 0..parts {
        if rng.gen_bool(0.3) {
            s.push_str(NASTY[rng.gen_range(0..NASTY.len())]);
        } else {
            s.push(rng.gen_range(b'a'..=b'z') as char);
        }
    }
    s
}

/// CBOR heads that announce the most a length can say: byte and text
/// strings, arrays and maps of 2^64-1 (or 2^32-1) items, and an
/// indefinite-length string of such chunks.
pub fn huge_lengths(rng: &mut Rng) -> Vec<u8> {
    let heads: [&[u8]; 9] = [
        &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x5a, 0xff, 0xff, 0xff, 0xff],
        &[0x7a, 0x7f, 0xff, 0xff, 0xff],
        &[0x9a, 0x10, 0x00, 0x00, 0x00],
        &[0x5f, 0x5b, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
        &[0x7f, 0x7a, 0x40, 0x00, 0x00, 0x00],
    ];
    let mut out = Vec::new();
    // Inside a map or an enum, as the message types expect them.
    if rng.gen_bool(0.5) {
        out.push(0xa1);
        let key = text(rng);
        out.push(0x60 | key.len().min(23) as u8);
        out.extend(&key.as_bytes()[..key.len().min(23)]);
    }
    out.extend(heads[rng.gen_range(0..heads.len())]);
    out.extend(random_bytes(rng, 16));
    out
}

/// CBOR nested `depth` deep: arrays, maps, tags or indefinite arrays.
pub fn deep_cbor(rng: &mut Rng, depth: usize) -> Vec<u8> {
    let open: &[u8] = match rng.gen_range(0..5) {
        0 => &[0x81],
        1 => &[0xa1, 0x61, b'k'],
        2 => &[0xc6],
        3 => &[0x9f],
        _ => &[0xa1, 0x64, b'O', b'n', b'c', b'e'],
    };
    let mut out = open.repeat(depth);
    out.push(0x00);
    out
}

/// A mutation of `valid`: truncated, bits flipped, bytes replaced by
/// interesting ones, a range removed or repeated, a length head inserted.
pub fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut out = valid.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let at = rng.gen_range(0..=out.len());
        match rng.gen_range(0..7) {
            0 => out.truncate(at),
            1 if at < out.len() => out[at] ^= 1 << rng.gen_range(0..8),
            2 if at < out.len() => {
                const SPECIAL: [u8; 10] = [0, 0xff, 0x1b, 0x5b, 0x7b, 0x9b, 0xbb, 0x9f, 0xc6, 0xf7];
                out[at] = SPECIAL[rng.gen_range(0..SPECIAL.len())];
            }
            3 => {
                let end = rng.gen_range(at..=out.len());
                out.drain(at..end);
            }
            4 => {
                let end = rng.gen_range(at..=out.len().min(at + 64));
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
            5 => {
                let piece = huge_lengths(rng);
                out.splice(at..at, piece);
            }
            _ => {
                let piece = random_bytes(rng, 8);
                out.splice(at..at, piece);
            }
        }
    }
    out
}
