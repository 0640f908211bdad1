//! What to write and how much: page-choice patterns, their random generator
//! and the per-tick page budget.
use std::fmt;
use std::str::FromStr;

use super::page::{GOLDEN, mix64};

/// Parse errors of the workload's command-line values.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("unknown pattern {0:?} (expected uniform, skew or seq)")]
    Pattern(String),
    #[error("unknown fill {0:?} (expected random or compressible)")]
    Fill(String),
    #[error("bad write rate {0:?} (expected a non-negative number of MiB/s or \"max\")")]
    Rate(String),
}

/// Which page of its shard a writer thread writes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u32)]
pub enum Pattern {
    /// Any page of the shard, uniformly at random.
    #[default]
    Uniform = 1,
    /// 90% of the writes to the first 10% of the shard (the hot set), 10% to the rest.
    Skew = 2,
    /// A sequential sweep of the shard that wraps around.
    Seq = 3,
}

impl FromStr for Pattern {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(Self::Uniform),
            "skew" => Ok(Self::Skew),
            "seq" => Ok(Self::Seq),
            _ => Err(ParseError::Pattern(s.to_owned())),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Uniform => "uniform",
            Self::Skew => "skew",
            Self::Seq => "seq",
        })
    }
}

/// How fast the workload dirties data pages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WriteRate {
    /// Distinct pages per second times the page size, in MB/s (10^6 bytes,
    /// the unit pagehop reports rates in); 0 means idle.
    MbPerSec(f64),
    /// Unthrottled: as fast as possible.
    Max,
}

impl Default for WriteRate {
    fn default() -> Self {
        Self::MbPerSec(20.0)
    }
}

impl WriteRate {
    /// Pages per second over all threads, or `None` when unthrottled.
    pub fn pages_per_sec(self, page_size: usize) -> Option<f64> {
        match self {
            Self::MbPerSec(mb) => Some(mb * 1e6 / page_size as f64),
            Self::Max => None,
        }
    }
}

impl FromStr for WriteRate {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "max" {
            return Ok(Self::Max);
        }
        match s.parse::<f64>() {
            Ok(mb) if mb.is_finite() && mb >= 0.0 => Ok(Self::MbPerSec(mb)),
            _ => Err(ParseError::Rate(s.to_owned())),
        }
    }
}

impl fmt::Display for WriteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MbPerSec(mb) => write!(f, "{mb}"),
            Self::Max => f.write_str("max"),
        }
    }
}

/// splitmix64 generator; its whole state is one word, kept in the arena header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rng(pub u64);

impl Rng {
    /// The generator of writer thread `thread` for run seed `seed`.
    pub fn for_thread(seed: u64, thread: usize) -> Self {
        Self(mix64(
            seed ^ mix64((thread as u64 + 1).wrapping_mul(GOLDEN)),
        ))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// Uniform in `0..bound` (`bound > 0`), by multiply-shift.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// The choice state of one writer thread, kept in its arena header slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickState {
    pub rng: Rng,
    /// Next page of the sequential sweep (shard-relative).
    pub cursor: u64,
}

/// Share of the writes of [`Pattern::Skew`] that go to the hot set.
pub const HOT_SHARE: f64 = 0.9;

/// Size of the hot set of a shard of `pages` pages: its first 10%, at least one page.
pub fn hot_pages(pages: u64) -> u64 {
    (pages / 10).max(1)
}

/// One shard-relative page in `0..pages` (`pages > 0`) chosen by `pattern`.
pub fn pick(pattern: Pattern, state: &mut PickState, pages: u64) -> u64 {
    match pattern {
        Pattern::Uniform => state.rng.below(pages),
        Pattern::Skew => {
            let hot = hot_pages(pages);
            if hot == pages || state.rng.chance(HOT_SHARE) {
                state.rng.below(hot)
            } else {
                hot + state.rng.below(pages - hot)
            }
        }
        Pattern::Seq => {
            let page = state.cursor % pages;
            state.cursor = (page + 1) % pages;
            page
        }
    }
}

/// Chooses the distinct pages a thread writes in one tick.
#[derive(Debug)]
pub struct TickPicker {
    /// Bitmap of the pages chosen so far in the current tick.
    seen: Vec<u64>,
    pages: u64,
}

impl TickPicker {
    /// A picker for a shard of `pages` pages (`pages > 0`).
    pub fn new(pages: u64) -> Self {
        Self {
            seen: vec![0; pages.div_ceil(64) as usize],
            pages,
        }
    }

    /// Replaces `out` with `min(n, pages)` distinct shard-relative pages.
    pub fn pick_tick(
        &mut self,
        pattern: Pattern,
        state: &mut PickState,
        n: u64,
        out: &mut Vec<u64>,
    ) {
        out.clear();
        if n >= self.pages && pattern != Pattern::Seq {
            out.extend(0..self.pages);
            return;
        }
        let n = n.min(self.pages);
        while (out.len() as u64) < n {
            let page = pick(pattern, state, self.pages);
            let (word, bit) = ((page / 64) as usize, 1u64 << (page % 64));
            if self.seen[word] & bit == 0 {
                self.seen[word] |= bit;
                out.push(page);
            }
        }
        for &page in out.iter() {
            self.seen[(page / 64) as usize] = 0;
        }
    }
}

/// Pages to write this tick for a per-tick `share` plus the `carry` left from
/// earlier ticks, capped at `cap`; returns the count and the new carry.
pub fn tick_quota(share: f64, carry: f64, cap: u64) -> (u64, f64) {
    let want = share + carry;
    let whole = want.floor();
    let carry = want - whole;
    if whole >= cap as f64 {
        (cap, carry)
    } else {
        (whole as u64, carry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(seed: u64) -> PickState {
        PickState {
            rng: Rng::for_thread(seed, 0),
            cursor: 0,
        }
    }

    #[test]
    fn parses_patterns_and_rates() {
        assert_eq!("skew".parse::<Pattern>().unwrap(), Pattern::Skew);
        assert!("hot".parse::<Pattern>().is_err());
        assert_eq!("max".parse::<WriteRate>().unwrap(), WriteRate::Max);
        assert_eq!(
            "0.5".parse::<WriteRate>().unwrap(),
            WriteRate::MbPerSec(0.5)
        );
        assert_eq!("0".parse::<WriteRate>().unwrap(), WriteRate::MbPerSec(0.0));
        for bad in ["-1", "NaN", "inf", "fast", ""] {
            assert!(bad.parse::<WriteRate>().is_err(), "{bad} accepted");
        }
        assert_eq!(WriteRate::MbPerSec(4.096).pages_per_sec(4096), Some(1000.0));
    }

    #[test]
    fn uniform_stays_in_shard_and_covers_it() {
        let mut st = state(3);
        let mut hits = [0u32; 50];
        for _ in 0..50_000 {
            hits[pick(Pattern::Uniform, &mut st, 50) as usize] += 1;
        }
        assert!(hits.iter().all(|&h| (700..1300).contains(&h)), "{hits:?}");
    }

    #[test]
    fn skew_puts_ninety_percent_in_the_hot_tenth() {
        let mut st = state(7);
        let pages = 1000;
        let draws = 100_000;
        let hot = (0..draws)
            .filter(|_| pick(Pattern::Skew, &mut st, pages) < 100)
            .count();
        let share = hot as f64 / draws as f64;
        assert!((0.88..0.92).contains(&share), "hot share {share}");
        // Every picked page is in the shard, and the cold set is used too.
        let cold = (0..10_000)
            .map(|_| pick(Pattern::Skew, &mut st, pages))
            .max()
            .unwrap();
        assert!((900..1000).contains(&cold), "max cold pick {cold}");
        // A one-page shard is all hot.
        assert_eq!(pick(Pattern::Skew, &mut st, 1), 0);
    }

    #[test]
    fn seq_wraps_around() {
        let mut st = state(1);
        st.cursor = 3;
        let got: Vec<u64> = (0..7).map(|_| pick(Pattern::Seq, &mut st, 5)).collect();
        assert_eq!(got, [3, 4, 0, 1, 2, 3, 4]);
        assert_eq!(st.cursor, 0);
    }

    #[test]
    fn tick_pages_are_distinct() {
        for pattern in [Pattern::Uniform, Pattern::Skew, Pattern::Seq] {
            let pages = 100;
            let mut picker = TickPicker::new(pages);
            let mut st = state(11);
            let mut out = Vec::new();
            for n in [0, 1, 10, 50, 99, 100, 150] {
                picker.pick_tick(pattern, &mut st, n, &mut out);
                assert_eq!(out.len() as u64, n.min(pages), "{pattern} n={n}");
                let mut sorted = out.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), out.len(), "{pattern} n={n}: duplicates");
                assert!(out.iter().all(|&p| p < pages));
            }
        }
    }

    #[test]
    fn seq_ticks_continue_the_sweep() {
        let mut picker = TickPicker::new(10);
        let mut st = state(1);
        let mut out = Vec::new();
        picker.pick_tick(Pattern::Seq, &mut st, 4, &mut out);
        assert_eq!(out, [0, 1, 2, 3]);
        picker.pick_tick(Pattern::Seq, &mut st, 8, &mut out);
        assert_eq!(out, [4, 5, 6, 7, 8, 9, 0, 1]);
    }

    #[test]
    fn quota_carries_fractions() {
        // 2.5 pages per tick: 2, 3, 2, 3, ...
        let mut carry = 0.0;
        let mut got = Vec::new();
        for _ in 0..4 {
            let (n, c) = tick_quota(2.5, carry, 1000);
            got.push(n);
            carry = c;
        }
        assert_eq!(got, [2, 3, 2, 3]);
        // 0.25 pages per tick: 10 ticks write 2 pages and carry half a page.
        let mut carry = 0.0;
        let mut total = 0;
        for _ in 0..10 {
            let (n, c) = tick_quota(0.25, carry, 1000);
            total += n;
            carry = c;
        }
        assert_eq!((total, carry), (2, 0.5));
        // Capped at the shard size, and idle stays idle.
        assert_eq!(tick_quota(500.25, 0.5, 100), (100, 0.75));
        assert_eq!(tick_quota(0.0, 0.0, 100), (0, 0.0));
    }
}
