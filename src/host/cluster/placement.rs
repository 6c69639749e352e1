//! Which member owns an actor: rendezvous (highest random weight) hashing over the live
//! members' advertised addresses.
//!
//! Why it exists: every host must name the same owner for an actor from the same member list
//! without asking anyone (no round trip on a wake), and a change of members must move only the
//! actors of the member that came or went. Rendezvous hashing does both: each (member, actor)
//! pair gets a score, the highest score owns the actor, and removing a member moves exactly the
//! actors it owned. The hash is fixed here (FNV-1a, then the SplitMix64 finalizer), so hosts of
//! one build agree; it is not a security boundary (forwarding grants nothing: the owner checks
//! every token).

/// The score of `member` (an advertised address) for `actor`: the highest wins.
pub fn score(member: &str, actor: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member
        .bytes()
        .chain(std::iter::once(0xff))
        .chain(actor.bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // SplitMix64's finalizer spreads FNV's weak low bits over the whole word.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The owner of `actor` among `members` (advertised addresses): the highest score, ties
/// broken by the smaller address. `None` when there is no member.
pub fn owner<'a>(members: &'a [String], actor: &str) -> Option<&'a str> {
    members
        .iter()
        .map(|m| (score(m, actor), m.as_str()))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("127.0.0.1:{}", 7420 + i)).collect()
    }

    #[test]
    fn the_score_is_pinned() {
        // Hosts of different builds must agree: the function may not change silently (the
        // value was checked against an independent implementation of FNV-1a + SplitMix64).
        assert_eq!(score("127.0.0.1:7420", "a"), score("127.0.0.1:7420", "a"));
        assert_eq!(score("127.0.0.1:7420", "a"), 0x9768_fb66_9fa5_4604);
        assert_ne!(score("127.0.0.1:7420", "a"), score("127.0.0.1:7421", "a"));
    }

    #[test]
    fn owners_spread_evenly_and_a_leaving_member_moves_only_its_own_actors() {
        let three = members(3);
        let mut counts = [0usize; 3];
        let owner_of = |ms: &[String], a: &str| owner(ms, a).map(str::to_string);
        for i in 0..3000 {
            let a = format!("actor-{i}");
            let o = owner_of(&three, &a).expect("an owner");
            counts[three.iter().position(|m| *m == o).expect("a member")] += 1;
        }
        for c in counts {
            assert!((800..=1200).contains(&c), "uneven spread: {counts:?}");
        }
        let two: Vec<String> = three[..2].to_vec();
        for i in 0..3000 {
            let a = format!("actor-{i}");
            let before = owner_of(&three, &a).expect("an owner");
            let after = owner_of(&two, &a).expect("an owner");
            if before != three[2] {
                assert_eq!(before, after, "{a} moved though its owner stayed");
            }
        }
        assert_eq!(owner(&[], "a"), None);
    }
}
