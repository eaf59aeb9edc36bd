//! One counted view in Redis: the dedupe marker, the total, the day and the announcement in
//! one Lua script, so one round trip counts it and a retry (an outbox replay after a lost
//! reply, or a timed-out call that ran late) cannot count it twice.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::cluster::link::{EVENTS, Link, LinkError};

/// How long an op id is remembered when there is no dedupe window to carry it (the marker's
/// value is the op id otherwise).
const OP_MEMORY_MS: u64 = 24 * 60 * 60 * 1000;

/// KEYS: the reader's marker, `vc:totals`, the day's hash, the op key (used only without a
/// dedupe window). ARGV: slug, op id, window in ms, channel, op memory in ms.
///
/// The marker holds the op id that set it: a second run of the same op finds its own id and
/// answers "counted" without adding; another op within the window is deduplicated.
const SCRIPT: &str = r#"
local function total() return tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') end
if tonumber(ARGV[3]) > 0 then
  if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
    if redis.call('GET', KEYS[1]) == ARGV[2] then return {1, total(), 1} end
    return {0, total(), 0}
  end
elseif not redis.call('SET', KEYS[4], 1, 'NX', 'PX', ARGV[5]) then
  return {1, total(), 1}
end
local t = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('PUBLISH', ARGV[4], 't ' .. ARGV[1] .. ' ' .. t)
return {1, t, 0}
"#;

/// `EVALSHA`, falling back to `EVAL` (and loading it) after a Redis restart.
static COUNT: LazyLock<Script> = LazyLock::new(|| Script::new(SCRIPT));

/// A view to count in Redis, as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    pub slug: String,
    pub reader: String,
    /// Unique per view (node id and a random number): what makes a retry a no-op.
    pub op: String,
    /// `YYYYMMDD`, the day it was counted on (by this node's `--timezone`).
    pub day: u32,
}

/// What Redis decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counted {
    /// The view is in the total (now, or by an earlier run of the same op).
    pub counted: bool,
    /// The post's total after it.
    pub total: u64,
    /// An earlier run of this op had already counted it.
    pub again: bool,
}

pub(crate) fn totals_key() -> &'static str {
    "vc:totals"
}

pub(crate) fn day_key(day: u32) -> String {
    format!("vc:day:{day}")
}

/// Slugs and reader ids never hold a space, so "slug reader" is unambiguous.
fn seen_key(slug: &str, reader: &str) -> String {
    format!("vc:seen:{slug} {reader}")
}

/// Counts `view` once per dedupe window (`window` zero: every view counts, once per op).
pub(crate) async fn count(
    link: &Link,
    view: &View,
    window: Duration,
) -> Result<Counted, LinkError> {
    let window_ms = window.as_millis().min(u64::MAX as u128) as u64;
    let mut invocation = COUNT.prepare_invoke();
    invocation
        .key(seen_key(&view.slug, &view.reader))
        .key(totals_key())
        .key(day_key(view.day))
        .key(format!("vc:op:{}", view.op))
        .arg(&view.slug)
        .arg(&view.op)
        .arg(window_ms)
        .arg(EVENTS)
        .arg(OP_MEMORY_MS);
    let (counted, total, again): (u8, u64, u8) = link
        .call("count", |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await?;
    Ok(Counted {
        counted: counted == 1,
        total,
        again: again == 1,
    })
}
