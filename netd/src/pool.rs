//! The address pool: hands out one subnet per link from configured ranges, never overlapping an
//! address or route of the host or a subnet already handed out
//! (`docs/architecture.md#address-pools`).
//!
//! Pure: what is in use on the host is passed in. Candidates are scanned in range order
//! (networkd's 192.168.0.0/16, 172.16.0.0/12, 10.0.0.0/8) starting just after the last subnet
//! handed out, so a subnet freed a moment ago is not given straight to the next container
//! (stale ARP and conntrack entries of the old one cannot hit the new one).

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// networkd's IPv4 pools, in its order.
pub fn default_ranges() -> Vec<Ipv4Network> {
    [
        Ipv4Network::new(Ipv4Addr::new(192, 168, 0, 0), 16),
        Ipv4Network::new(Ipv4Addr::new(172, 16, 0, 0), 12),
        Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), 8),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Why the pool could not give a subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every candidate overlaps something in use.
    #[error("address pool exhausted: no free /{prefix} left in {ranges}")]
    Exhausted {
        /// The prefix length asked for.
        prefix: u8,
        /// The configured ranges, for the message.
        ranges: String,
    },
    /// A range is not larger than the subnets cut from it.
    #[error("pool range {range} is too small for /{prefix} subnets")]
    RangeTooSmall {
        /// The range.
        range: Ipv4Network,
        /// The prefix length of the subnets.
        prefix: u8,
    },
    /// A subnet to reserve overlaps one already handed out.
    #[error("subnet {0} overlaps a subnet already in use")]
    Overlap(Ipv4Network),
}

/// Whether two networks share any address.
pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// A pool of subnets of one prefix length.
#[derive(Debug, Clone)]
pub struct Pool {
    ranges: Vec<Ipv4Network>,
    prefix: u8,
    allocated: Vec<Ipv4Network>,
    /// Range index and network address of the last subnet handed out.
    cursor: Option<(usize, u32)>,
}

impl Pool {
    /// A pool cutting `/prefix` subnets out of `ranges` (scanned in that order).
    pub fn new(ranges: Vec<Ipv4Network>, prefix: u8) -> Result<Self, PoolError> {
        if let Some(&range) = ranges.iter().find(|r| r.prefix() >= prefix || prefix > 30) {
            return Err(PoolError::RangeTooSmall { range, prefix });
        }
        Ok(Self {
            ranges,
            prefix,
            allocated: Vec::new(),
            cursor: None,
        })
    }

    /// The prefix length of the subnets handed out.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The subnets handed out and not yet released.
    pub fn allocated(&self) -> &[Ipv4Network] {
        &self.allocated
    }

    /// Hands out a free subnet that overlaps neither `in_use` (host addresses and routes; a
    /// default route is ignored) nor a subnet already handed out.
    pub fn allocate(&mut self, in_use: &[Ipv4Network]) -> Result<Ipv4Network, PoolError> {
        let taken: Vec<Ipv4Network> = in_use
            .iter()
            .copied()
            .filter(|n| n.prefix() > 0)
            .chain(self.allocated.iter().copied())
            .collect();
        let n = self.ranges.len();
        let (first, after) = match self.cursor {
            Some((i, addr)) => (i, Some(addr)),
            None => (0, None),
        };
        // Visit the cursor's range from just after the cursor, the other ranges in order, then
        // the cursor's range again from its start.
        let mut order: Vec<(usize, Option<u32>, Option<u32>)> = vec![(first, after, None)];
        order.extend((1..n).map(|k| ((first + k) % n, None, None)));
        if after.is_some() {
            order.push((first, None, after));
        }
        for (i, from_after, up_to) in order {
            if let Some(net) = self.scan(self.ranges[i], from_after, up_to, &taken) {
                self.allocated.push(net);
                self.cursor = Some((i, u32::from(net.network())));
                return Ok(net);
            }
        }
        Err(PoolError::Exhausted {
            prefix: self.prefix,
            ranges: self
                .ranges
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Scans `range` for a free subnet, starting after `from_after` and stopping at `up_to`
    /// (inclusive), jumping over taken blocks rather than stepping through them.
    fn scan(
        &self,
        range: Ipv4Network,
        from_after: Option<u32>,
        up_to: Option<u32>,
        taken: &[Ipv4Network],
    ) -> Option<Ipv4Network> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        let start = u64::from(u32::from(range.network()));
        let end = start + (1u64 << (32 - u32::from(range.prefix())));
        let mut c = match from_after {
            Some(a) => u64::from(a) + size,
            None => start,
        };
        let last = up_to.map_or(end - size, u64::from);
        while c <= last && c + size <= end {
            let cand =
                Ipv4Network::new(Ipv4Addr::from(u32::try_from(c).ok()?), self.prefix).ok()?;
            match taken.iter().find(|t| overlaps(**t, cand)) {
                None => return Some(cand),
                Some(t) => {
                    let t_end = u64::from(u32::from(t.broadcast())) + 1;
                    // Next aligned candidate past both this one and the taken block.
                    let next = (c + size).max(t_end);
                    c = next.div_ceil(size) * size;
                }
            }
        }
        None
    }

    /// The subnet [`allocate`](Self::allocate) would hand out now, without handing it out
    /// (for a plan; [`take`](Self::take) then hands it out).
    pub fn peek(&self, in_use: &[Ipv4Network]) -> Result<Ipv4Network, PoolError> {
        self.clone().allocate(in_use)
    }

    /// Hands out `net`, a subnet [`peek`](Self::peek) proposed: as `allocate` would have.
    pub fn take(&mut self, net: Ipv4Network) -> Result<(), PoolError> {
        self.reserve(net)?;
        if let Some(i) = self.ranges.iter().position(|r| overlaps(*r, net)) {
            self.cursor = Some((i, u32::from(net.network())));
        }
        Ok(())
    }

    /// Marks `net` as handed out (restoring saved state).
    pub fn reserve(&mut self, net: Ipv4Network) -> Result<(), PoolError> {
        if self.allocated.contains(&net) {
            return Ok(());
        }
        if self.allocated.iter().any(|a| overlaps(*a, net)) {
            return Err(PoolError::Overlap(net));
        }
        self.allocated.push(net);
        Ok(())
    }

    /// Gives `net` back; returns whether it was handed out.
    pub fn release(&mut self, net: Ipv4Network) -> bool {
        let before = self.allocated.len();
        self.allocated.retain(|a| *a != net);
        before != self.allocated.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn first_subnet_is_the_first_free_28() {
        let mut p = Pool::new(default_ranges(), 28).unwrap();
        assert_eq!(p.allocate(&[]).unwrap(), net("192.168.0.0/28"));
        assert_eq!(p.allocate(&[]).unwrap(), net("192.168.0.16/28"));
    }

    #[test]
    fn skips_host_addresses_and_routes_but_not_the_default_route() {
        let mut p = Pool::new(default_ranges(), 28).unwrap();
        let in_use = [
            net("0.0.0.0/0"),
            net("192.168.0.5/24"),
            net("192.168.1.0/25"),
        ];
        assert_eq!(p.allocate(&in_use).unwrap(), net("192.168.1.128/28"));
    }

    #[test]
    fn falls_through_to_the_next_range_in_order() {
        let mut p = Pool::new(default_ranges(), 28).unwrap();
        let in_use = [net("192.168.0.0/16")];
        assert_eq!(p.allocate(&in_use).unwrap(), net("172.16.0.0/28"));
        let in_use = [net("192.168.0.0/16"), net("172.16.0.0/12")];
        assert_eq!(p.allocate(&in_use).unwrap(), net("10.0.0.0/28"));
    }

    #[test]
    fn released_subnets_are_not_reused_at_once() {
        let mut p = Pool::new(vec![net("10.0.0.0/26")], 28).unwrap();
        let a = p.allocate(&[]).unwrap();
        assert!(p.release(a));
        assert_eq!(p.allocate(&[]).unwrap(), net("10.0.0.16/28"));
        // The scan wraps to the freed one when nothing else is left.
        p.allocate(&[]).unwrap();
        p.allocate(&[]).unwrap();
        assert_eq!(p.allocate(&[]).unwrap(), a);
    }

    #[test]
    fn exhaustion_is_a_clear_error() {
        let mut p = Pool::new(vec![net("10.0.0.0/27")], 28).unwrap();
        p.allocate(&[]).unwrap();
        p.allocate(&[]).unwrap();
        assert_eq!(
            p.allocate(&[]).unwrap_err().to_string(),
            "address pool exhausted: no free /28 left in 10.0.0.0/27"
        );
        assert_eq!(p.allocated().len(), 2);
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(Pool::new(vec![net("10.0.0.0/28")], 28).is_err());
        assert!(Pool::new(vec![net("10.0.0.0/8")], 31).is_err());
    }

    #[test]
    fn reserve_refuses_overlaps() {
        let mut p = Pool::new(default_ranges(), 28).unwrap();
        p.reserve(net("192.168.0.0/28")).unwrap();
        p.reserve(net("192.168.0.0/28")).unwrap();
        assert!(p.reserve(net("192.168.0.0/24")).is_err());
        assert_eq!(p.allocate(&[]).unwrap(), net("192.168.0.16/28"));
    }

    fn arb_net() -> impl Strategy<Value = Ipv4Network> {
        (any::<u32>(), 8u8..=30).prop_map(|(a, p)| {
            let n = Ipv4Network::new(Ipv4Addr::from(a), p).unwrap();
            Ipv4Network::new(n.network(), p).unwrap()
        })
    }

    proptest! {
        /// Whatever is in use and whatever the order of allocations and releases, the pool never
        /// hands out overlapping subnets, never one that overlaps something in use, and always
        /// stays inside its ranges.
        #[test]
        fn never_double_allocates(
            in_use in proptest::collection::vec(arb_net(), 0..20),
            ops in proptest::collection::vec(any::<bool>(), 1..200),
        ) {
            let ranges = vec![net("192.168.0.0/24"), net("10.0.0.0/25")];
            let mut p = Pool::new(ranges.clone(), 28).unwrap();
            for alloc in ops {
                if alloc || p.allocated().is_empty() {
                    if let Ok(n) = p.allocate(&in_use) {
                        prop_assert!(ranges.iter().any(|r| r.contains(n.network()) && r.contains(n.broadcast())));
                        prop_assert!(!in_use.iter().any(|u| overlaps(*u, n)));
                    }
                } else {
                    let first = p.allocated()[0];
                    p.release(first);
                }
                let a = p.allocated();
                for i in 0..a.len() {
                    for j in i + 1..a.len() {
                        prop_assert!(!overlaps(a[i], a[j]), "{} and {}", a[i], a[j]);
                    }
                }
            }
        }

        /// When the pool reports exhaustion, no free candidate really exists.
        #[test]
        fn exhaustion_is_true(in_use in proptest::collection::vec(arb_net(), 0..10)) {
            let ranges = vec![net("10.1.0.0/26")];
            let mut p = Pool::new(ranges, 28).unwrap();
            while p.allocate(&in_use).is_ok() {}
            for k in 0..4u32 {
                let cand = Ipv4Network::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + 16 * k), 28).unwrap();
                let free = !in_use.iter().any(|u| overlaps(*u, cand))
                    && !p.allocated().iter().any(|a| overlaps(*a, cand));
                prop_assert!(!free, "{} was free", cand);
            }
        }
    }
}
