//! The sticky, balanced partition assignor of stream groups.
//!
//! Invariants of [`assign`]'s result, for `n` partitions and `m > 0` members:
//! - every partition has exactly one member;
//! - every member has `n / m` or `n / m + 1` partitions (balanced);
//! - sticky: a partition stays with its previous member unless that member left or holds
//!   more than its share. The `n % m` larger shares go to the members that already hold
//!   the most, so the number of partitions that move is the least any balanced
//!   assignment allows.
//!
//! Pure and deterministic (members are identified by their index in a sorted list), so a
//! rebalance is reproducible in tests.

/// The new owner (member index) of each partition, from each partition's previous owner
/// (`None`: none, or a member that is gone). With no members, every partition is `None`.
pub fn assign(members: usize, previous: &[Option<usize>]) -> Vec<Option<usize>> {
    let n = previous.len();
    if members == 0 {
        return vec![None; n];
    }
    let mut held = vec![0usize; members];
    for owner in previous.iter().flatten() {
        if *owner < members {
            held[*owner] += 1;
        }
    }
    // Larger shares to the members holding the most (ties: lower index).
    let (base, extra) = (n / members, n % members);
    let mut by_held: Vec<usize> = (0..members).collect();
    by_held.sort_by_key(|&i| (std::cmp::Reverse(held[i]), i));
    let mut quota = vec![base; members];
    for &i in by_held.iter().take(extra) {
        quota[i] += 1;
    }
    let mut target = vec![None; n];
    let mut count = vec![0usize; members];
    let mut free = Vec::new();
    for (p, owner) in previous.iter().enumerate() {
        match owner {
            Some(i) if *i < members && count[*i] < quota[*i] => {
                target[p] = Some(*i);
                count[*i] += 1;
            }
            _ => free.push(p),
        }
    }
    let mut free = free.into_iter();
    for i in 0..members {
        while count[i] < quota[i] {
            let p = free.next().expect("quotas add up to the partition count");
            target[p] = Some(i);
            count[i] += 1;
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(target: &[Option<usize>], members: usize) -> Vec<usize> {
        let mut c = vec![0; members];
        for t in target.iter().flatten() {
            c[*t] += 1;
        }
        c
    }

    #[test]
    fn a_new_member_takes_only_its_share() {
        // 12 partitions over 3 members (4 each), then a 4th joins: 3 partitions move.
        let first = assign(3, &[None; 12]);
        assert_eq!(counts(&first, 3), vec![4, 4, 4]);
        let second = assign(4, &first);
        assert_eq!(counts(&second, 4), vec![3, 3, 3, 3]);
        let moved = first.iter().zip(&second).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 3);
    }

    #[test]
    fn a_leaving_member_moves_only_its_partitions() {
        let first = assign(4, &[None; 12]);
        // Member 2 leaves: indexes above it shift down by one.
        let previous: Vec<Option<usize>> = first
            .iter()
            .map(|o| match o {
                Some(2) => None,
                Some(i) if *i > 2 => Some(i - 1),
                other => *other,
            })
            .collect();
        let second = assign(3, &previous);
        assert_eq!(counts(&second, 3), vec![4, 4, 4]);
        for (p, (before, after)) in previous.iter().zip(&second).enumerate() {
            if before.is_some() {
                assert_eq!(
                    before, after,
                    "partition {p} moved although its owner stayed"
                );
            }
        }
    }

    #[test]
    fn no_members_no_owners() {
        assert_eq!(assign(0, &[Some(0), None]), vec![None, None]);
    }

    proptest! {
        #[test]
        fn balanced_complete_and_sticky(
            members in 1usize..20,
            previous in proptest::collection::vec(proptest::option::of(0usize..25), 0..120),
        ) {
            let target = assign(members, &previous);
            let n = previous.len();
            prop_assert_eq!(target.len(), n);
            prop_assert!(target.iter().all(|t| matches!(t, Some(i) if *i < members)));
            let c = counts(&target, members);
            let (lo, hi) = (n / members, n / members + usize::from(n % members != 0));
            prop_assert!(c.iter().all(|&k| k >= lo && k <= hi), "unbalanced: {:?}", c);
            // Sticky: the partitions that move are exactly the excess over each
            // surviving member's share plus the orphans, and no balanced assignment
            // can move fewer.
            let mut held = vec![0usize; members];
            for o in previous.iter().flatten().filter(|o| **o < members) {
                held[*o] += 1;
            }
            let mut sorted = held.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            let least_kept: usize = sorted
                .iter()
                .enumerate()
                .map(|(rank, &h)| h.min(lo + usize::from(rank < n % members)))
                .sum();
            let kept = previous
                .iter()
                .zip(&target)
                .filter(|(p, t)| p.is_some() && p == t)
                .count();
            prop_assert_eq!(kept, least_kept);
        }
    }
}
