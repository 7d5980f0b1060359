//! The correctness check that runs while the bench measures: every record published is
//! consumed exactly once, and each producer's records arrive in the order it sent them.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub expected: u64,
    pub missing: u64,
    pub duplicate: u64,
    pub out_of_order: u64,
    pub foreign: u64,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.duplicate == 0 && self.out_of_order == 0 && self.foreign == 0
    }

    /// Adds the counts of a check of other records (a run verified in parts).
    pub fn add(&mut self, other: &Verdict) {
        self.expected += other.expected;
        self.missing += other.missing;
        self.duplicate += other.duplicate;
        self.out_of_order += other.out_of_order;
        self.foreign += other.foreign;
    }
}

/// Tracks, per producer, which sequence numbers were seen and the highest so far.
#[derive(Debug)]
pub struct Verifier {
    seen: Vec<Vec<bool>>,
    highest: Vec<Option<u64>>,
    duplicate: u64,
    out_of_order: u64,
    foreign: u64,
    /// Expectations not fixed yet: sequences extend `seen` as they arrive.
    open: bool,
}

impl Verifier {
    /// `per_producer[p]` records expected from producer p.
    pub fn new(per_producer: &[u64]) -> Verifier {
        Verifier {
            seen: per_producer
                .iter()
                .map(|&n| vec![false; n as usize])
                .collect(),
            highest: vec![None; per_producer.len()],
            duplicate: 0,
            out_of_order: 0,
            foreign: 0,
            open: false,
        }
    }

    /// A verifier whose expectations are fixed later ([`Verifier::expect`]), for runs
    /// bounded by time where producers' counts are known only at the end.
    pub fn open_ended(producers: usize) -> Verifier {
        let mut v = Verifier::new(&vec![0; producers]);
        v.open = true;
        v
    }

    /// Fixes how many records each producer sent (open-ended verifiers).
    pub fn expect(&mut self, per_producer: &[u64]) {
        for (p, &n) in per_producer.iter().enumerate() {
            if let Some(seen) = self.seen.get_mut(p) {
                if seen.len() as u64 > n {
                    // Records beyond what the producer reports sending: not ours.
                    self.foreign += seen[n as usize..].iter().filter(|&&b| b).count() as u64;
                }
                seen.resize(n as usize, false);
            }
        }
        self.open = false;
    }

    pub fn record(&mut self, producer: u32, sequence: u64) {
        let p = producer as usize;
        if self.open {
            if let Some(seen) = self.seen.get_mut(p) {
                if seen.len() <= sequence as usize && sequence < 1 << 40 {
                    seen.resize(sequence as usize + 1, false);
                }
            }
        }
        let Some(slot) = self
            .seen
            .get_mut(p)
            .and_then(|s| s.get_mut(sequence as usize))
        else {
            // Not a record this run published (or beyond what its producer sent).
            self.foreign += 1;
            return;
        };
        if *slot {
            self.duplicate += 1;
            return;
        }
        *slot = true;
        match self.highest[p] {
            Some(h) if sequence < h => self.out_of_order += 1,
            _ => self.highest[p] = Some(sequence),
        }
    }

    /// Records a received value: the producer and sequence in its payload, or a foreign
    /// record if it carries none.
    pub fn record_payload(&mut self, value: &[u8]) {
        match crate::payload::read(value) {
            Some((producer, sequence, _)) => self.record(producer, sequence),
            None => self.record(u32::MAX, 0),
        }
    }

    pub fn verdict(&self) -> Verdict {
        let expected: u64 = self.seen.iter().map(|s| s.len() as u64).sum();
        let seen: u64 = self
            .seen
            .iter()
            .map(|s| s.iter().filter(|&&b| b).count() as u64)
            .sum();
        Verdict {
            expected,
            missing: expected - seen,
            duplicate: self.duplicate,
            out_of_order: self.out_of_order,
            foreign: self.foreign,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_kind_of_fault() {
        let mut v = Verifier::new(&[4, 2]);
        for s in [0, 1, 3, 1, 2] {
            v.record(0, s);
        }
        v.record(1, 0);
        v.record(5, 0);
        let verdict = v.verdict();
        assert_eq!(
            verdict,
            Verdict {
                expected: 6,
                missing: 1,
                duplicate: 1,
                out_of_order: 1,
                foreign: 1
            }
        );
        assert!(!verdict.passed());
        let mut open = Verifier::open_ended(1);
        open.record(0, 1);
        open.record(0, 0);
        open.expect(&[3]);
        assert_eq!(
            open.verdict(),
            Verdict {
                expected: 3,
                missing: 1,
                duplicate: 0,
                out_of_order: 1,
                foreign: 0
            }
        );
        let mut ok = Verifier::new(&[2]);
        ok.record(0, 0);
        ok.record(0, 1);
        assert!(ok.verdict().passed());
    }
}
