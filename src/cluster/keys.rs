//! Where each post's data lives in Redis. One layout for a standalone Redis and a Redis
//! Cluster: every post belongs to one of [`GROUPS`] key groups, and every key of the group
//! carries the group's hash tag (`vc:{g7}:totals`), so a Redis Cluster keeps a group on one
//! hash slot and each script (a view, a rebuild chunk, an import of a group) touches one slot.
//!
//! The group of a slug is FNV-1a (32 bits) of its bytes, modulo [`GROUPS`]. Both are part of
//! the data's format: changing either moves posts to other keys, and a node of another version
//! would then count into keys the others do not read. The tests pin some slugs' groups.
//! Public for the integration tests and for operators who read Redis themselves.

// Every channel carries the same hash tag, `{ch}`. Channels hold no data, but the `redis`
// crate's cluster client sends `SUBSCRIBE`/`UNSUBSCRIBE` (and, after a reconnect, one `SUBSCRIBE` of every channel
// it tracks) to the master of its first channel's hash slot. With one tag, each of them goes
// to the same master, so an `UNSUBSCRIBE` reaches the member that holds the subscription
// and a resubscription does not leave the old ones behind on another member. Plain `PUBLISH`
// reaches every member of a Redis Cluster, so where the subscriptions live costs nothing.
// (redis 0.32: `cluster_handling/async_connection`, `subscribe` and `resubscribe`; the test
// `redis_cluster::…_unsubscribes_from_every_post_that_went_to_sleep` fails when they leak.)

/// The channel every node hears: a node leaving, and totals moved outside counting (a
/// rebuild, an import).
pub const EVENTS: &str = "vc:{ch}:events";
/// The prefix of a post's channel: its live changes and new totals, heard only by the nodes
/// that serve it (and those following the whole site, [`ALL_POSTS`]).
pub const POST_CHANNELS: &str = "vc:{ch}:p:";
/// The pattern of every post's channel (not [`EVENTS`]).
pub const ALL_POSTS: &str = "vc:{ch}:p:*";

/// A post's channel.
pub fn post_channel(slug: &str) -> String {
    format!("{POST_CHANNELS}{slug}")
}

/// 16 groups: the heartbeat's loss check reads two fields of this node's part of each group,
/// so it costs 16 small reads a second whatever the number of posts; 16 hash slots
/// spread the counting over up to 16 masters (3 to 6 is the usual Redis Cluster), while 64
/// would quadruple the idle check for masters few clusters have.
pub(crate) const GROUPS: u16 = 16;

/// Every group, as a bit set ([`Groups`]).
pub(crate) const ALL: Groups = Groups((1 << GROUPS) - 1);

/// One key group: what the hash tag of its keys names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Group(u16);

impl Group {
    /// The group of a post.
    pub fn of(slug: &str) -> Self {
        // FNV-1a, 32 bits (offset basis and prime of the FNV reference).
        let hash = slug.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        Self((hash % u32::from(GROUPS)) as u16)
    }

    pub(crate) fn all() -> impl Iterator<Item = Self> {
        (0..GROUPS).map(Self)
    }

    pub(crate) fn index(self) -> usize {
        usize::from(self.0)
    }

    fn key(self, rest: &str) -> String {
        format!("vc:{{g{}}}:{rest}", self.0)
    }

    /// The posts' totals of the group: field slug, value views.
    pub fn totals(self) -> String {
        self.key("totals")
    }

    /// A day's views of the group's posts.
    pub fn day(self, day: u32) -> String {
        self.key(&format!("day:{day}"))
    }

    /// The days (`YYYYMMDD`) the group has a day's hash of: what the owner reads all days by,
    /// without a `SCAN` (which a Redis Cluster answers per master).
    pub(crate) fn days(self) -> String {
        self.key("days")
    }

    /// The generation of the group's data: made anew (by the first node to find it missing)
    /// once Redis lost it, which tells every node to rebuild its part of the group.
    pub(crate) fn generation(self) -> String {
        self.key("gen")
    }

    /// A record's part of the group's sums (see [`crate::cluster::record`]).
    pub(crate) fn part(self, record: &str) -> String {
        self.key(&format!("part:{record}"))
    }

    /// The views counted in the group's time slices of one parity (0 or 1) whose reader's
    /// fingerprint starts with `bucket` (see [`crate::cluster::counter`]).
    pub(crate) fn seen(self, parity: u64, bucket: u8) -> String {
        self.key(&format!("seen:{parity}:{bucket:02x}"))
    }

    /// What the ops of one run of a node decided, 2 bits an op, in chunks: `prefix` is the
    /// op id up to its sequence number (see [`crate::cluster::counter`]).
    pub fn ops(self, prefix: &str, chunk: u64) -> String {
        self.key(&format!("ops:{prefix}:{chunk:x}"))
    }
}

/// A set of groups (bit `i`: group `i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Groups(pub(crate) u32);

impl Groups {
    pub(crate) fn with(self, group: Group) -> Self {
        Self(self.0 | 1 << group.0)
    }

    pub(crate) fn has(self, group: Group) -> bool {
        self.0 & 1 << group.0 != 0
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn iter(self) -> impl Iterator<Item = Group> {
        Group::all().filter(move |g| self.has(*g))
    }
}

/// A day's field in a part: `YYYYMMDD slug` (a slug never holds a space; a post's total is
/// the field named by its slug alone).
pub(crate) fn day_field(day: u32, slug: &str) -> String {
    format!("{day} {slug}")
}

/// Keys of the layout before key groups (one `vc:totals`, `vc:gen`, `vc:part:ID`, …): a node
/// of this version neither reads nor deletes them (README, "Cluster mode": upgrading).
#[cfg(test)]
pub(crate) const OLD_TOTALS: &str = "vc:totals";

#[cfg(test)]
mod tests {
    use super::*;

    /// The groups are the data's format: a change here moves every post to other keys.
    #[test]
    fn a_slugs_group_never_changes_between_versions() {
        let pinned = [
            ("alpha", 11),
            ("beta", 7),
            ("gamma", 10),
            ("hello-world", 14),
            ("2026/12/cluster-mode", 2),
        ];
        for (slug, group) in pinned {
            assert_eq!(Group::of(slug), Group(group), "{slug}");
        }
    }

    #[test]
    fn every_key_of_a_group_carries_its_hash_tag() {
        let g = Group(7);
        for key in [
            g.totals(),
            g.day(20261207),
            g.days(),
            g.generation(),
            g.part("00000000000000ab"),
            g.seen(1, 0xab),
            g.ops("n-1", 3),
        ] {
            assert!(key.starts_with("vc:{g7}:"), "{key}");
        }
        assert_ne!(g.totals(), OLD_TOTALS);
    }
}
