//! Where each post's data lives in Redis. One layout for a standalone Redis and a Redis
//! Cluster: every post belongs to one of [`GROUPS`] key groups, and every key of the group
//! carries the group's hash tag (`vc:{g7}:totals`), so a Redis Cluster keeps a group on one
//! hash slot and each script (a view, a rebuild chunk, an import of a group) touches one slot.
//!
//! The group of a slug is FNV-1a (32 bits) of its bytes, modulo [`GROUPS`]. Both are part of
//! the data's format: changing either moves posts to other keys, and a node of another version
//! would then count into keys the others do not read. The tests pin some slugs' groups.
//!
//! Per group: `totals` (field slug: views), `day:YYYYMMDD` (field slug: views that day),
//! `reads:YYYYMMDD` (per post the reading-time counts of the day, fields `slug 0` to `slug 15`
//! for the buckets and `slug ms` for the sum of milliseconds), `peaks:YYYYMMDD` (field slug:
//! `LIVE AT`, the most readers at once and the unix second first reached), `days` (the days
//! any of those three has), `gen`, `part:{record}` (what one record added to each sum field:
//! `slug`, `YYYYMMDD slug`, `YYYYMMDD slug M`; see [`PartField`]), `seen:…` and `op:…`. The
//! site's peaks (`site`, field `YYYYMMDD`) are in [`Group::SITE`].
//! Public for the integration tests and for operators who read Redis themselves.

use crate::storage::presence::{Peak, READ_BUCKETS, Reads};

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

    /// A day's reading times of the group's posts, summed over the records like views: per
    /// post its [`MEASURES`] counts, field `slug M` ([`read_field`]), absent while 0.
    pub fn reads(self, day: u32) -> String {
        self.key(&format!("reads:{day}"))
    }

    /// A day's peaks of the group's posts: field slug, value `LIVE AT` ([`parse_peak`]), the
    /// highest any node saw (a max, not a sum: no part holds it).
    pub fn peaks(self, day: u32) -> String {
        self.key(&format!("peaks:{day}"))
    }

    /// The group that holds the whole site's peaks ([`Group::site_peaks`]): group 0, so its
    /// rebuild restores them.
    pub const SITE: Self = Self(0);

    /// The whole site's peak per day (of [`Group::SITE`] only): field `YYYYMMDD`, value
    /// `LIVE AT`.
    pub fn site_peaks(self) -> String {
        self.key("site")
    }

    /// The days (`YYYYMMDD`) the group has a day's hash of (views, reading times or peaks):
    /// what the owner reads all days by, without a `SCAN` (which a Redis Cluster answers per
    /// master).
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

    /// The mark of an import (its id, [`crate::cluster::store`]) whose rows of the group are
    /// applied, kept until the whole import is: a run cut short and run again skips them.
    pub(crate) fn import_mark(self, id: u64) -> String {
        self.key(&format!("import:{id:016x}"))
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

/// Reading-time counts per post and day: the [`READ_BUCKETS`] buckets (measures `0` to
/// `15`), then the sum of milliseconds (`ms`).
pub(crate) const MEASURES: usize = READ_BUCKETS + 1;

/// A measure's name in its fields.
fn measure_name(measure: usize) -> String {
    if measure < READ_BUCKETS {
        measure.to_string()
    } else {
        "ms".to_owned()
    }
}

/// A post's field of a measure in a day's reads hash: `slug M`; in a part the day comes first
/// ([`day_field`]), `YYYYMMDD slug M`.
pub(crate) fn read_field(slug: &str, measure: usize) -> String {
    format!("{slug} {}", measure_name(measure))
}

/// `slug M` of a reads hash: the slug and the measure.
pub(crate) fn parse_read_field(field: &str) -> Option<(&str, usize)> {
    let (slug, name) = field.split_once(' ')?;
    let measure = match name {
        "ms" => READ_BUCKETS,
        n => n
            .parse()
            .ok()
            .filter(|&m| m < READ_BUCKETS && measure_name(m) == n)?,
    };
    Some((slug, measure))
}

/// Reading times as their measures' counts.
pub(crate) fn measures(reads: &Reads) -> [u64; MEASURES] {
    let mut out = [0; MEASURES];
    for (out, &n) in out.iter_mut().zip(&reads.buckets) {
        *out = u64::from(n);
    }
    out[READ_BUCKETS] = reads.sum_ms;
    out
}

/// One measure's count taken into `reads` (a bucket past `u32` stays at its largest).
pub(crate) fn set_measure(reads: &mut Reads, measure: usize, count: u64) {
    match reads.buckets.get_mut(measure) {
        Some(bucket) => *bucket = u32::try_from(count).unwrap_or(u32::MAX),
        None => reads.sum_ms = count,
    }
}

/// A field of a record's part (see [`crate::cluster::record`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PartField<'a> {
    /// `slug`: the post's views.
    Total(&'a str),
    /// `YYYYMMDD slug`: its views on a day.
    Day(u32, &'a str),
    /// `YYYYMMDD slug M`: a measure of its reading times on a day.
    Read(u32, &'a str, usize),
}

impl<'a> PartField<'a> {
    /// `None` for `#n`, `#gen` and anything this version does not write.
    pub(crate) fn parse(field: &'a str) -> Option<Self> {
        if field.starts_with('#') {
            return None;
        }
        let Some((day, rest)) = field.split_once(' ') else {
            return Some(Self::Total(field));
        };
        let day = day.parse().ok()?;
        Some(match parse_read_field(rest) {
            Some((slug, measure)) => Self::Read(day, slug, measure),
            None if !rest.contains(' ') => Self::Day(day, rest),
            None => return None,
        })
    }
}

/// A peak as Redis keeps it, `LIVE AT` (readers at once, unix seconds first reached; written
/// by the record's raise script); `None` for anything else.
pub(crate) fn parse_peak(value: &str) -> Option<Peak> {
    let (live, at) = value.split_once(' ')?;
    Some(Peak {
        live: live.parse().ok()?,
        at: at.parse().ok()?,
    })
}

/// Keys of the layout before key groups (one `vc:totals`, `vc:gen`, `vc:part:ID`, …): a node
/// of this version neither reads nor deletes them (README, "Cluster mode": upgrading).
#[cfg(test)]
pub(crate) const OLD_TOTALS: &str = "vc:totals";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parts_fields_read_back_as_the_views_or_reading_times_they_hold() {
        assert_eq!(PartField::parse("alpha"), Some(PartField::Total("alpha")));
        let day = day_field(20261207, "alpha");
        assert_eq!(
            PartField::parse(&day),
            Some(PartField::Day(20261207, "alpha"))
        );
        for measure in 0..MEASURES {
            let field = day_field(20261207, &read_field("alpha", measure));
            let read = PartField::Read(20261207, "alpha", measure);
            assert_eq!(PartField::parse(&field), Some(read), "{field}");
        }
        for other in [
            "#n",
            "#gen",
            "20261207 alpha 16",
            "20261207 alpha 01",
            "x alpha",
        ] {
            assert_eq!(PartField::parse(other), None, "{other}");
        }
        let peak = Peak {
            live: 3,
            at: 1_796_637_600,
        };
        assert_eq!(parse_peak("3 1796637600"), Some(peak));
        assert_eq!(parse_peak("3"), None);
    }

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
            g.reads(20261207),
            g.peaks(20261207),
            g.site_peaks(),
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
