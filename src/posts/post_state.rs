//! The counting rules of one post, free of actors and clocks (time is passed in), so they can
//! be tested exhaustively: live = open reader streams minus those a beacon took away, never
//! negative; a view counts once per reader id per dedupe window (the post's counter then
//! decides it and keeps the total). Views are counted per reader id, live readers per
//! [`Presence`] (a reader id in one showing of its page), so a beacon only ends the showing it
//! was sent for.
//!
//! Reading time: a showing counted as a view (now or within the dedupe window) that stops
//! being live yields one reading: with a beacon, the visible time the page measured, never more
//! than the time the showing was seen open here; when its streams drop without a beacon, the
//! time seen open, at most [`READ_CAP`]. A beacon without a time yields none; bots, showings
//! refused a view, and showings that were not live yield none.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::edge::reader_id::{Presence, ReaderKey};
use crate::storage::presence::READ_CAP;

/// What every reader of a post sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Counts {
    pub live: u64,
    pub total: u64,
}

/// The result of a stream opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JoinOutcome {
    /// A view counts: its reader id is new within the window and its charge was taken.
    pub counted: bool,
    /// Not counted because its reader id was counted within the dedupe window.
    pub deduplicated: bool,
    /// What the stream must quote when it departs.
    pub epoch: u32,
    /// Live or total moved.
    pub changed: bool,
}

/// How a showing stopped counting as live (a beacon, or its last live stream closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Ended {
    /// Live moved.
    pub moved: bool,
    /// The showing's reading time, if it yields one.
    pub read: Option<Duration>,
}

/// One presence's open streams on this post.
#[derive(Debug)]
struct Reader {
    open: u32,
    /// Open streams still counted as live (not yet beaconed away).
    live: u32,
    /// Bumped by each beacon; streams opened before it no longer count on departure.
    epoch: u32,
    /// Since when the showing has been live (while `live` > 0).
    live_since: Instant,
    /// Its reader id was counted as a view (now or within the dedupe window): its reading
    /// time counts.
    counted: bool,
}

impl Reader {
    /// The showing's live streams are gone: its reading time, if it yields one. `visible`:
    /// what a beacon said (`None`: no beacon, so the open time, capped; `Some(None)`: a
    /// beacon without a time).
    fn end(&mut self, visible: Option<Option<Duration>>, now: Instant) -> Option<Duration> {
        if !self.counted {
            return None;
        }
        let open = now.saturating_duration_since(self.live_since);
        match visible {
            None => Some(open.min(READ_CAP)),
            Some(said) => said.map(|v| v.min(open)),
        }
    }
}

/// Reader ids counted within the dedupe window, in time slices of about a window / [`SLICES`]:
/// one compact table per slice, so expiry drops a whole slice once its newest entry is older
/// than the window, while each entry keeps its own time, so the rule stays exact (to the
/// millisecond, rounded up: a reader id is never counted twice within the window).
#[derive(Debug)]
struct Dedupe {
    window: Duration,
    /// By start, oldest first; a slice holds the views counted from its start to the next
    /// one's.
    slices: Vec<Slice>,
}

/// How many slices a window is cut into: an entry is kept up to a slice longer than the
/// window (1/8 more memory at most), and a reader id new to the post is looked up in each.
const SLICES: u32 = 8;

/// Entries keep their time as `u32` milliseconds after their slice's start, `u32::MAX`
/// marking a free place; a longer window gets more slices.
const LONGEST_SLICE: Duration = Duration::from_millis(u32::MAX as u64 - 2);

impl Dedupe {
    fn new(window: Duration) -> Self {
        Self {
            window,
            slices: Vec::new(),
        }
    }

    /// True when the reader id was not counted within the window.
    fn is_new(&mut self, reader: ReaderKey, now: Instant) -> bool {
        self.expire(now);
        let key = reader.bits();
        // Newest first: a reconnect is the likely hit. An entry outside the window may still
        // sit in an older slice that also holds newer ones.
        !self.slices.iter().rev().any(|slice| {
            slice
                .table
                .get(key)
                .is_some_and(|ms| now.saturating_duration_since(slice.at(ms)) < self.window)
        })
    }

    fn remember(&mut self, reader: ReaderKey, at: Instant) {
        if self.window.is_zero() {
            return;
        }
        let length = (self.window / SLICES).clamp(Duration::from_millis(1), LONGEST_SLICE);
        // The last slice starting at or before `at` (views come in order: nearly always the
        // newest), unless `at` is past its length: then a new slice starts at `at`.
        let before = self.slices.iter().rposition(|slice| slice.start <= at);
        let i = match before {
            Some(i) if at - self.slices[i].start < length => i,
            _ => {
                let i = before.map_or(0, |i| i + 1);
                // One slice more, not double: a post read once keeps one small slice.
                self.slices.reserve_exact(1);
                self.slices.insert(i, Slice::new(at));
                i
            }
        };
        let slice = &mut self.slices[i];
        // Rounded up, below `u32::MAX` since the offset is under the slice's length.
        let ms = (at - slice.start).as_nanos().div_ceil(1_000_000) as u32;
        slice.table.insert(reader.bits(), ms);
        slice.newest = slice.newest.max(ms);
    }

    /// Drops the slices whose newest entry is out of the window.
    fn expire(&mut self, now: Instant) {
        let window = self.window;
        let gone = self
            .slices
            .iter()
            .take_while(|slice| now.saturating_duration_since(slice.at(slice.newest)) >= window)
            .count();
        self.slices.drain(..gone);
    }

    /// When the oldest slice is dropped.
    fn next_expiry(&self) -> Option<Instant> {
        let oldest = self.slices.first()?;
        oldest.at(oldest.newest).checked_add(self.window)
    }

    fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// Heap bytes held (the slices and their tables).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.slices.capacity() * std::mem::size_of::<Slice>()
            + self
                .slices
                .iter()
                .map(|slice| slice.table.heap_bytes())
                .sum::<usize>()
    }
}

/// The reader ids counted within one stretch of time.
#[derive(Debug)]
struct Slice {
    start: Instant,
    /// The newest entry's time (ms after `start`): the slice expires with it.
    newest: u32,
    table: Table,
}

impl Slice {
    fn new(start: Instant) -> Self {
        Self {
            start,
            newest: 0,
            table: Table::default(),
        }
    }

    fn at(&self, ms: u32) -> Instant {
        self.start + Duration::from_millis(u64::from(ms))
    }
}

/// A set of 64-bit keys with a time each (`u32`): open addressing with linear probing over
/// fixed 12-byte entries, no allocation per entry. The keys are keyed-hash bits, uniformly
/// spread, so they are their own hash.
#[derive(Default)]
struct Table {
    entries: Box<[Entry]>,
    len: usize,
}

/// A key (as two halves: 12 bytes, where a `u64` would align the entry to 16) and its time,
/// `FREE` when the place is empty.
#[derive(Clone, Copy)]
struct Entry {
    key: [u32; 2],
    at: u32,
}

const FREE: u32 = u32::MAX;

impl Entry {
    const EMPTY: Entry = Entry {
        key: [0; 2],
        at: FREE,
    };
}

fn halves(key: u64) -> [u32; 2] {
    [key as u32, (key >> 32) as u32]
}

impl Table {
    fn get(&self, key: u64) -> Option<u32> {
        let i = self.find(key).ok()?;
        Some(self.entries[i].at)
    }

    /// Adds the key, or keeps the later time if it is there.
    fn insert(&mut self, key: u64, at: u32) {
        // At most 4/5 full: a miss probes ~13 entries (a few cache lines).
        if (self.len + 1) * 5 > self.entries.len() * 4 {
            self.grow();
        }
        match self.find(key) {
            Ok(i) => self.entries[i].at = self.entries[i].at.max(at),
            Err(i) => {
                self.entries[i] = Entry {
                    key: halves(key),
                    at,
                };
                self.len += 1;
            }
        }
    }

    /// The key's place (`Ok`), or the free place where it would go (`Err`). The table is
    /// never full, so a free place ends every probe.
    fn find(&self, key: u64) -> Result<usize, usize> {
        let capacity = self.entries.len();
        if capacity == 0 {
            return Err(0);
        }
        // The key's high bits scaled to the capacity, which then need not be a power of two.
        let mut i = ((u128::from(key) * capacity as u128) >> 64) as usize;
        let key = halves(key);
        loop {
            let entry = self.entries[i];
            if entry.at == FREE {
                return Err(i);
            }
            if entry.key == key {
                return Ok(i);
            }
            i = if i + 1 == capacity { 0 } else { i + 1 };
        }
    }

    /// Half as large again (not double), so a table is at least 8/15 full: 12 to 23 bytes an
    /// entry.
    fn grow(&mut self) {
        let capacity = self.entries.len();
        let larger = (capacity + capacity / 2).max(capacity + 2);
        let old = std::mem::replace(&mut self.entries, vec![Entry::EMPTY; larger].into());
        for entry in old.iter().filter(|entry| entry.at != FREE) {
            let key = u64::from(entry.key[0]) | (u64::from(entry.key[1]) << 32);
            if let Err(i) = self.find(key) {
                self.entries[i] = *entry;
            }
        }
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.entries)
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("len", &self.len)
            .field("capacity", &self.entries.len())
            .finish()
    }
}

/// How long an ended page showing is remembered: longer than a join beacon can be late.
pub(crate) const ENDED_MEMORY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct PostState {
    /// Live readers: open reader streams minus those a beacon took away.
    live: u64,
    readers: HashMap<Presence, Reader>,
    /// Page showings a beacon ended (show numbers above 0), newest last: a join for one that
    /// arrives after its leave (the two beacons crossing on the network, or a shared stream's
    /// leader re-joining a tab that was closing) must not make it live again.
    ended: VecDeque<(Instant, Presence)>,
    /// Streams served numbers without being readers: bots, and watchers (index pages, the
    /// dashboard). They keep the post awake but count nowhere.
    observers: u32,
    dedupe: Dedupe,
}

impl PostState {
    pub(crate) fn new(dedupe_window: Duration) -> Self {
        Self {
            live: 0,
            readers: HashMap::new(),
            ended: VecDeque::new(),
            observers: 0,
            dedupe: Dedupe::new(dedupe_window),
        }
    }

    pub(crate) fn live(&self) -> u64 {
        self.live
    }

    /// A stream opens. `may_count` is asked only for a view that would count (a reader id new
    /// within the window), so a rate limit is charged for counted views only; `is_reader`
    /// false (bot) is served numbers without being live.
    pub(crate) fn join(
        &mut self,
        presence: Presence,
        may_count: impl FnOnce() -> bool,
        is_reader: bool,
        now: Instant,
    ) -> JoinOutcome {
        let is_new = self.dedupe.is_new(presence.reader, now);
        let counted = is_new && may_count();
        if counted {
            self.dedupe.remember(presence.reader, now);
        }
        if !is_reader {
            self.observe();
            return JoinOutcome {
                counted,
                deduplicated: !is_new,
                epoch: 0,
                changed: counted,
            };
        }
        let ended = self.has_ended(presence, now);
        let entry = self.readers.entry(presence).or_insert(Reader {
            open: 0,
            live: 0,
            epoch: 0,
            live_since: now,
            counted: false,
        });
        entry.open += 1;
        if ended {
            // Held, but not live: an epoch its departure can never match.
            return JoinOutcome {
                counted,
                deduplicated: !is_new,
                epoch: entry.epoch.wrapping_sub(1),
                changed: counted,
            };
        }
        if entry.live == 0 {
            entry.live_since = now;
            // Counted now, or earlier within the window (a reconnect, a restore).
            entry.counted = counted || !is_new;
        }
        entry.live += 1;
        self.live += 1;
        JoinOutcome {
            counted,
            deduplicated: !is_new,
            epoch: entry.epoch,
            changed: true,
        }
    }

    /// A beacon, with the time the page says it was visible (older scripts send none): every
    /// stream of this presence stops counting as live. A showing numbered by its page (above
    /// 0) is over for good: a later join of it is not live either. Show 0 (clients that number
    /// nothing) may come back.
    pub(crate) fn leave(
        &mut self,
        presence: Presence,
        visible: Option<Duration>,
        now: Instant,
    ) -> Ended {
        if presence.show > 0 && !self.has_ended(presence, now) {
            self.ended.push_back((now, presence));
        }
        let Some(entry) = self.readers.get_mut(&presence) else {
            return Ended::default();
        };
        entry.epoch = entry.epoch.wrapping_add(1);
        let was_live = u64::from(entry.live);
        if was_live == 0 {
            return Ended::default();
        }
        entry.live = 0;
        self.live -= was_live;
        Ended {
            moved: true,
            read: entry.end(Some(visible), now),
        }
    }

    /// Whether a beacon ended this showing within [`ENDED_MEMORY`] (older ones are forgotten).
    fn has_ended(&mut self, presence: Presence, now: Instant) -> bool {
        while self
            .ended
            .front()
            .is_some_and(|&(at, _)| now.duration_since(at) >= ENDED_MEMORY)
        {
            self.ended.pop_front();
        }
        self.ended.iter().any(|&(_, p)| p == presence)
    }

    /// A stream closed. Live moved if it had not been beaconed away; the showing's last live
    /// stream closing without a beacon ends it.
    pub(crate) fn depart(
        &mut self,
        presence: Presence,
        epoch: u32,
        is_reader: bool,
        now: Instant,
    ) -> Ended {
        if !is_reader {
            self.unobserve();
            return Ended::default();
        }
        let Some(entry) = self.readers.get_mut(&presence) else {
            return Ended::default();
        };
        entry.open = entry.open.saturating_sub(1);
        let was_live = entry.epoch == epoch && entry.live > 0;
        let mut ended = Ended::default();
        if was_live {
            entry.live -= 1;
            self.live -= 1;
            ended = Ended {
                moved: true,
                read: (entry.live == 0).then(|| entry.end(None, now)).flatten(),
            };
        }
        if entry.open == 0 {
            self.readers.remove(&presence);
        }
        ended
    }

    /// Someone is served this post's numbers without reading it (a bot's stream, a watcher).
    pub(crate) fn observe(&mut self) {
        self.observers += 1;
    }

    /// An observer went away.
    pub(crate) fn unobserve(&mut self) {
        self.observers = self.observers.saturating_sub(1);
    }

    /// Seeds the dedupe memory with a reader id counted before this actor existed (before a
    /// restart). Call in the order they were counted, before any join.
    pub(crate) fn remember(&mut self, reader: ReaderKey, counted_at: Instant) {
        self.dedupe.remember(reader, counted_at);
    }

    /// Forgets the reader ids counted longer ago than the dedupe window, a slice at a time
    /// (each once its newest is out of the window; the others are no longer matched).
    pub(crate) fn expire(&mut self, now: Instant) {
        self.dedupe.expire(now);
    }

    /// When the oldest slice of remembered reader ids is forgotten (its newest leaves the
    /// window): the post's housekeeping wakes once per slice, not per reader id.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.dedupe.next_expiry()
    }

    /// Nobody reads the post and nothing needs remembering: it may sleep.
    pub(crate) fn is_idle(&self) -> bool {
        self.readers.is_empty() && self.observers == 0 && self.dedupe.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::reader_id::ReaderId;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const WINDOW: Duration = Duration::from_secs(1800);

    fn key(i: u8) -> ReaderKey {
        ReaderId::parse(&format!("reader-{i:0>12}")).unwrap().key()
    }

    fn presence(reader: u8, show: u32) -> Presence {
        Presence {
            reader: key(reader),
            show,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A stream opens for reader `n` in page showing `show` (a reconnect, a restore from
        /// the back/forward cache, or a duplicate token when `n` was seen).
        Join {
            reader: u8,
            show: u32,
            may_count: bool,
            is_reader: bool,
        },
        /// A beacon for reader `n`, sent for page showing `show`, with the visible time the
        /// page measured (ms) or none (an older script).
        Leave {
            reader: u8,
            show: u32,
            visible: Option<u32>,
        },
        /// The `n`-th open stream (modulo how many are open) closes.
        Drop { stream: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, 0u32..3, any::<bool>(), prop::bool::weighted(0.9)).prop_map(
                |(reader, show, may_count, is_reader)| Op::Join {
                    reader,
                    show,
                    may_count,
                    is_reader
                }
            ),
            (0u8..6, 0u32..3, prop::option::of(0u32..60_000)).prop_map(
                |(reader, show, visible)| Op::Leave {
                    reader,
                    show,
                    visible
                }
            ),
            any::<usize>().prop_map(|stream| Op::Drop { stream }),
        ]
    }

    /// An open stream as the model sees it.
    struct Stream {
        reader: u8,
        show: u32,
        is_reader: bool,
        epoch: u32,
        beaconed: bool,
    }

    proptest! {
        #[test]
        fn live_is_open_streams_minus_beaconed_a_reader_id_counts_once_per_window_and_readings_are_believed_up_to_the_open_time(
            ops in prop::collection::vec(op(), 0..200),
        ) {
            let start = Instant::now();
            let mut state = PostState::new(WINDOW);
            let mut open: Vec<Stream> = Vec::new();
            let mut counted: HashSet<u8> = HashSet::new();
            let mut ended: HashSet<(u8, u32)> = HashSet::new();
            // Per showing while live: since when, and whether its reader id was counted.
            let mut since: HashMap<(u8, u32), (Instant, bool)> = HashMap::new();
            let live_of = |open: &[Stream], reader: u8, show: u32| {
                open.iter()
                    .filter(|s| s.reader == reader && s.show == show && s.is_reader && !s.beaconed)
                    .count()
            };
            for (i, op) in ops.into_iter().enumerate() {
                // Within ENDED_MEMORY (and the window) over the whole run.
                let now = start + Duration::from_millis(i as u64 * 250);
                match op {
                    Op::Join { reader, show, may_count, is_reader } => {
                        let out = state.join(presence(reader, show), || may_count, is_reader, now);
                        let expect_count = may_count && !counted.contains(&reader);
                        prop_assert_eq!(out.counted, expect_count);
                        if expect_count {
                            counted.insert(reader);
                        }
                        // A showing a beacon ended joins held but not live.
                        let beaconed = ended.contains(&(reader, show));
                        if is_reader && !beaconed && live_of(&open, reader, show) == 0 {
                            since.insert((reader, show), (now, counted.contains(&reader)));
                        }
                        open.push(Stream { reader, show, is_reader, epoch: out.epoch, beaconed });
                    }
                    Op::Leave { reader, show, visible } => {
                        let visible = visible.map(|ms| Duration::from_millis(u64::from(ms)));
                        let out = state.leave(presence(reader, show), visible, now);
                        let was_live = live_of(&open, reader, show) > 0;
                        prop_assert_eq!(out.moved, was_live);
                        let read = match since.get(&(reader, show)) {
                            Some(&(at, true)) if was_live => visible.map(|v| v.min(now - at)),
                            _ => None,
                        };
                        prop_assert_eq!(out.read, read);
                        if show > 0 {
                            ended.insert((reader, show));
                        }
                        let sent_for = |s: &&mut Stream| s.reader == reader && s.show == show && s.is_reader;
                        for s in open.iter_mut().filter(sent_for) {
                            s.beaconed = true;
                        }
                    }
                    Op::Drop { stream } => {
                        if !open.is_empty() {
                            let s = open.remove(stream % open.len());
                            let out = state.depart(presence(s.reader, s.show), s.epoch, s.is_reader, now);
                            let moved = s.is_reader && !s.beaconed;
                            prop_assert_eq!(out.moved, moved);
                            let read = match since.get(&(s.reader, s.show)) {
                                Some(&(at, true)) if moved && live_of(&open, s.reader, s.show) == 0 => Some(now - at),
                                _ => None,
                            };
                            prop_assert_eq!(out.read, read);
                        }
                    }
                }
                let live = open.iter().filter(|s| s.is_reader && !s.beaconed).count() as u64;
                prop_assert_eq!(state.live(), live);
            }
            while let Some(s) = open.pop() {
                state.depart(presence(s.reader, s.show), s.epoch, s.is_reader, start);
            }
            prop_assert_eq!(state.live(), 0);
            state.expire(start + WINDOW + Duration::from_secs(60));
            prop_assert!(state.is_idle());
        }
    }

    /// What the dedupe memory is asked, at times in whole milliseconds.
    #[derive(Debug, Clone)]
    enum DedupeOp {
        /// Reader `n` is counted `ago` ms before now (0: a view; more: a restored one, in
        /// any order).
        Remember { reader: u8, ago: u32 },
        /// Is reader `n` new within the window?
        Ask { reader: u8 },
        /// Time passes: often exactly a slice or the window (or one ms either side).
        Wait { ms: u32 },
    }

    /// Times are mostly whole units of a sixteenth of the window, so that a view counted
    /// exactly a window (or a slice) ago is common, and slices hold several entries.
    fn dedupe_op(window_ms: u32) -> impl Strategy<Value = DedupeOp> {
        let unit = (window_ms / 16).max(1);
        let units = move |most: u32| (0..=most).prop_map(move |k| k * unit);
        let edges = vec![1, window_ms - 1, window_ms, window_ms + 1];
        prop_oneof![
            3 => (0u8..8, prop_oneof![3 => Just(0u32), 1 => units(40), 1 => 0..2 * window_ms])
                .prop_map(|(reader, ago)| DedupeOp::Remember { reader, ago }),
            3 => (0u8..8).prop_map(|reader| DedupeOp::Ask { reader }),
            2 => prop_oneof![units(20), prop::sample::select(edges), 0..window_ms]
                .prop_map(|ms| DedupeOp::Wait { ms }),
        ]
    }

    fn window_and_ops() -> impl Strategy<Value = (u32, Vec<DedupeOp>)> {
        let window_ms = prop_oneof![
            Just(16u32),
            Just(1600),
            (1u32..300).prop_map(|k| k * 16),
            1u32..5000
        ];
        window_ms.prop_flat_map(|window_ms| {
            (
                Just(window_ms),
                prop::collection::vec(dedupe_op(window_ms), 0..300),
            )
        })
    }

    proptest! {
        #[test]
        fn a_reader_id_is_new_exactly_when_its_latest_counting_is_a_window_or_more_ago_and_memory_empties_with_the_last(
            (window_ms, ops) in window_and_ops(),
        ) {
            let window = Duration::from_millis(u64::from(window_ms));
            let start = Instant::now() + 2 * window;
            let mut dedupe = Dedupe::new(window);
            let mut now = start;
            // The model: each reader's latest counting.
            let mut latest: HashMap<u8, Instant> = HashMap::new();
            let alive = |latest: &HashMap<u8, Instant>, now: Instant| {
                latest.values().filter(|&&at| now - at < window).count()
            };
            for op in ops {
                match op {
                    DedupeOp::Remember { reader, ago } => {
                        let at = now - Duration::from_millis(u64::from(ago));
                        dedupe.remember(key(reader), at);
                        let kept = latest.entry(reader).or_insert(at);
                        *kept = (*kept).max(at);
                    }
                    DedupeOp::Ask { reader } => {
                        let expect = latest.get(&reader).is_none_or(|&at| now - at >= window);
                        prop_assert_eq!(dedupe.is_new(key(reader), now), expect);
                    }
                    DedupeOp::Wait { ms } => now += Duration::from_millis(u64::from(ms)),
                }
                dedupe.expire(now);
                // Nothing is held once every entry is out of the window; the next expiry is
                // within a window from now.
                prop_assert_eq!(dedupe.is_empty(), alive(&latest, now) == 0);
                if let Some(next) = dedupe.next_expiry() {
                    prop_assert!(next > now && next <= now + window);
                }
            }
        }
    }

    #[test]
    fn a_remembered_view_costs_at_most_32_bytes_of_heap_once_the_window_is_full() {
        // 1,000 views a second for three windows of a minute, each reader id new.
        let window = Duration::from_secs(60);
        let start = Instant::now();
        let mut dedupe = Dedupe::new(window);
        let mut worst: f64 = 0.0;
        for second in 0..180u32 {
            let now = start + Duration::from_secs(u64::from(second));
            for i in 0..1000u32 {
                let id = ReaderId::parse(&format!("reader-{second:0>6}-{i:0>6}")).unwrap();
                let at = now + Duration::from_millis(u64::from(i));
                assert!(dedupe.is_new(id.key(), at));
                dedupe.remember(id.key(), at);
            }
            if second >= 60 {
                let per_view = dedupe.heap_bytes() as f64 / 60_000.0;
                worst = worst.max(per_view);
            }
        }
        assert!(worst <= 32.0, "{worst:.1} bytes per remembered view");
        assert_eq!(std::mem::size_of::<Entry>(), 12);
    }

    #[test]
    fn a_reader_id_counted_exactly_a_window_ago_counts_again_though_its_slice_holds_newer_ones() {
        let start = Instant::now();
        let window = Duration::from_secs(10);
        let mut state = PostState::new(window);
        assert!(state.join(presence(1, 0), || true, true, start).counted);
        let next = start + Duration::from_millis(1);
        assert!(state.join(presence(2, 0), || true, true, next).counted);
        let just_before = start + window - Duration::from_millis(1);
        assert!(
            !state
                .join(presence(1, 0), || true, true, just_before)
                .counted
        );
        assert!(
            state
                .join(presence(1, 0), || true, true, start + window)
                .counted
        );
        assert!(
            !state
                .join(presence(2, 0), || true, true, start + window)
                .counted
        );
    }

    #[test]
    fn a_time_between_milliseconds_is_rounded_so_that_a_reader_id_never_counts_twice_within_the_window()
     {
        let start = Instant::now();
        let window = Duration::from_secs(10);
        let mut state = PostState::new(window);
        assert!(state.join(presence(1, 0), || true, true, start).counted);
        let between = start + Duration::from_micros(500);
        assert!(state.join(presence(2, 0), || true, true, between).counted);
        let inside = between + window - Duration::from_micros(100);
        assert!(!state.join(presence(2, 0), || true, true, inside).counted);
        let past = between + window + Duration::from_millis(1);
        assert!(state.join(presence(2, 0), || true, true, past).counted);
    }

    #[test]
    fn a_reader_id_restored_twice_is_remembered_from_its_later_counting() {
        let start = Instant::now();
        let mut state = PostState::new(Duration::from_secs(10));
        state.remember(key(1), start);
        state.remember(key(1), start + Duration::from_secs(5));
        let later = start + Duration::from_secs(12);
        assert!(!state.join(presence(1, 0), || true, true, later).counted);
        let after = start + Duration::from_secs(15);
        assert!(state.join(presence(1, 0), || true, true, after).counted);
    }

    #[test]
    fn a_late_beacon_for_an_earlier_showing_leaves_the_restored_page_live() {
        let now = Instant::now();
        let mut state = PostState::new(WINDOW);
        let first = state.join(presence(1, 1), || true, true, now);
        assert!(state.depart(presence(1, 1), first.epoch, true, now).moved);
        let restored = state.join(presence(1, 2), || true, true, now);
        assert!(!restored.counted, "the same page view counts once");
        assert!(
            !state.leave(presence(1, 1), None, now).moved,
            "sent for the first showing"
        );
        assert_eq!(state.live(), 1);
        assert!(state.leave(presence(1, 2), None, now).moved);
        assert_eq!(state.live(), 0);
    }

    #[test]
    fn a_join_that_arrives_after_the_leave_of_its_showing_is_not_live() {
        let now = Instant::now();
        let mut state = PostState::new(WINDOW);
        assert!(
            !state.leave(presence(1, 3), None, now).moved,
            "nothing to take off yet"
        );
        let late = state.join(presence(1, 3), || true, true, now);
        assert!(late.counted, "the view still counts once");
        assert_eq!(state.live(), 0);
        assert!(!state.depart(presence(1, 3), late.epoch, true, now).moved);
        // A client that numbers nothing (show 0) may come back after its beacon.
        state.leave(presence(2, 0), None, now);
        state.join(presence(2, 0), || true, true, now);
        assert_eq!(state.live(), 1);
        // Forgotten after a while: the memory is bounded.
        let later = now + ENDED_MEMORY;
        state.join(presence(1, 3), || true, true, later);
        assert_eq!(state.live(), 2);
    }

    #[test]
    fn a_reader_counts_again_once_the_window_has_passed() {
        let start = Instant::now();
        let mut state = PostState::new(Duration::from_secs(10));
        assert!(state.join(presence(1, 0), || true, true, start).counted);
        assert!(
            !state
                .join(
                    presence(1, 0),
                    || true,
                    true,
                    start + Duration::from_secs(9)
                )
                .counted
        );
        assert!(
            state
                .join(
                    presence(1, 0),
                    || true,
                    true,
                    start + Duration::from_secs(11)
                )
                .counted
        );
        assert_eq!(state.live(), 3);
    }

    #[test]
    fn a_showing_is_believed_up_to_its_open_time_and_a_dropped_one_counts_at_most_the_cap() {
        let start = Instant::now();
        let mut state = PostState::new(WINDOW);
        let a = state.join(presence(1, 1), || true, true, start);
        let later = start + Duration::from_secs(40);
        let said = Some(Duration::from_secs(3600));
        assert_eq!(
            state.leave(presence(1, 1), said, later).read,
            Some(Duration::from_secs(40)),
            "never more than seen open"
        );
        assert_eq!(
            state.depart(presence(1, 1), a.epoch, true, later).read,
            None,
            "read once"
        );
        let b = state.join(presence(2, 1), || true, true, start);
        let hours = start + Duration::from_secs(7200);
        assert_eq!(
            state.depart(presence(2, 1), b.epoch, true, hours).read,
            Some(READ_CAP)
        );
        // An older script's beacon carries no time.
        state.join(presence(3, 1), || true, true, start);
        assert_eq!(state.leave(presence(3, 1), None, later).read, None);
        // A view the rate limit refused, and a bot, read nothing.
        let refused = state.join(presence(4, 1), || false, true, start);
        assert_eq!(
            state.depart(presence(4, 1), refused.epoch, true, later),
            Ended {
                moved: true,
                read: None
            }
        );
        let bot = state.join(presence(5, 1), || true, false, start);
        assert_eq!(
            state.depart(presence(5, 1), bot.epoch, false, later).read,
            None
        );
    }

    #[test]
    fn a_watcher_keeps_the_post_awake_and_counts_nowhere() {
        let mut state = PostState::new(WINDOW);
        state.observe();
        assert!(!state.is_idle(), "watched");
        assert_eq!(state.live(), 0);
        state.unobserve();
        assert!(state.is_idle());
        state.unobserve();
        assert!(state.is_idle(), "never below zero");
    }
}
