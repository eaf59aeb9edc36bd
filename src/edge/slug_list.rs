//! Which posts exist: the allow-list file (re-read on SIGHUP and when it changes), or any
//! well-formed slug up to `--max-slugs` posts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use crate::edge::limits::{ClientKey, NewPostRate};
use crate::edge::slug::Slug;
use crate::refusal::Refusal;

/// How often the file's modification time is looked at.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Used when the allow-list file does not exist, so a fresh binary serves its demo.
pub(crate) const EMBEDDED_DEMO_SLUGS: &str = include_str!("../../data/slugs.txt");

/// Which posts exist, and who may create one: the one place `--slugs`, `--allow-any-slug`,
/// `--max-slugs` and `--ip-new-post-rate` are decided.
pub(crate) enum SlugPolicy {
    Listed(Arc<SlugList>),
    /// `--allow-any-slug`: up to a number of posts, each client creating its share of them.
    Any(Arc<OpenPosts>),
}

/// `--allow-any-slug`'s bookkeeping: how many posts exist or are being created.
pub(crate) struct OpenPosts {
    max: u64,
    /// Posts with a row at start, plus those admitted since (given back by a new post that
    /// goes to sleep without a view).
    count: AtomicU64,
    new_posts: NewPostRate,
}

impl OpenPosts {
    /// `existing`: the posts the store holds a row for.
    pub(crate) fn new(max: u64, existing: u64, new_per_hour: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            count: AtomicU64::new(existing),
            new_posts: NewPostRate::per_hour(new_per_hour),
        })
    }

    pub(crate) fn prune(&self) {
        self.new_posts.prune();
    }
}

/// Whether a post with no row yet may come to exist, asked by one client.
#[derive(Clone)]
pub(crate) enum Admission {
    /// Allow-listed posts: always.
    Listed,
    /// Any well-formed slug, within the cap and the client's rate.
    Open {
        posts: Arc<OpenPosts>,
        client: ClientKey,
    },
}

/// A new post's place under `--max-slugs`: given back when dropped, unless the post was
/// viewed (it then has, or will have, a row).
pub struct NewPost {
    posts: Arc<OpenPosts>,
}

impl NewPost {
    /// The post counted a view: its place is its own for good.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for NewPost {
    fn drop(&mut self) {
        self.posts.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// The admission under which watching may wake a post with no row yet: a listed post
    /// exists already (admitting it takes nothing); an open one exists only once it has views.
    pub(crate) fn existing(&self) -> Option<&Self> {
        matches!(self, Self::Listed).then_some(self)
    }

    /// Admits a post the writer knows nothing of: `None` for listed posts (they always
    /// exist), a place for a new one, or why not (404 at the cap, 429 over the rate).
    pub(crate) fn admit_new(&self) -> Result<Option<NewPost>, Refusal> {
        let Self::Open { posts, client } = self else {
            return Ok(None);
        };
        let taken = posts
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < posts.max).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Refusal::SlugCapReached);
        }
        let place = NewPost {
            posts: Arc::clone(posts),
        };
        if !posts.new_posts.take(*client) {
            let retry_after = posts.new_posts.retry_after();
            return Err(Refusal::TooManyNewPosts { retry_after });
        }
        Ok(Some(place))
    }
}

impl SlugPolicy {
    /// How a well-formed slug asked for by `client` may be admitted; `None` when it is not on
    /// the list.
    pub(crate) fn admission(&self, slug: &Slug, client: ClientKey) -> Option<Admission> {
        match self {
            Self::Listed(list) => list.contains(slug.as_str()).then_some(Admission::Listed),
            Self::Any(posts) => Some(Admission::Open {
                posts: Arc::clone(posts),
                client,
            }),
        }
    }
}

pub(crate) struct SlugList {
    path: PathBuf,
    slugs: RwLock<Arc<HashSet<Box<str>>>>,
    stamp: RwLock<Option<(SystemTime, u64)>>,
}

impl SlugList {
    pub(crate) fn load(path: &Path) -> Arc<Self> {
        let list = Arc::new(Self {
            path: path.to_owned(),
            slugs: RwLock::new(Arc::default()),
            stamp: RwLock::new(None),
        });
        list.reload();
        list
    }

    pub(crate) fn contains(&self, slug: &str) -> bool {
        self.slugs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(slug)
    }

    /// Every listed slug, as loaded last.
    pub(crate) fn all(&self) -> Arc<HashSet<Box<str>>> {
        Arc::clone(&self.slugs.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the file again; a missing file means the embedded demo list.
    pub(crate) fn reload(&self) {
        let (text, stamp) = match std::fs::read_to_string(&self.path) {
            Ok(text) => (text, file_stamp(&self.path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %self.path.display(), "no allow-list file; serving the embedded demo slugs");
                (EMBEDDED_DEMO_SLUGS.to_owned(), None)
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot read the allow-list; keeping the old one");
                return;
            }
        };
        let slugs = parse(&text, &self.path);
        tracing::info!(path = %self.path.display(), slugs = slugs.len(), "allow-list loaded");
        *self.slugs.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(slugs);
        *self.stamp.write().unwrap_or_else(PoisonError::into_inner) = stamp;
    }

    /// Reloads when the file's modification time or size differs from the last load.
    pub(crate) fn reload_if_changed(&self) {
        let now = file_stamp(&self.path);
        if now != *self.stamp.read().unwrap_or_else(PoisonError::into_inner) {
            self.reload();
        }
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// One slug per line; `#` starts a comment; blank lines are skipped; bad lines are logged.
fn parse(text: &str, path: &Path) -> HashSet<Box<str>> {
    let mut slugs = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        match Slug::parse(line) {
            Ok(_) => {
                slugs.insert(Box::from(line));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), line = n + 1, error = %e, "skipping a malformed slug")
            }
        }
    }
    slugs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blank_and_bad_lines_are_skipped() {
        let set = parse(
            "# demo\nalpha\n\n  beta  # trailing\nbad slug\n../x\n",
            Path::new("t"),
        );
        let mut got: Vec<_> = set.iter().map(|s| s.to_string()).collect();
        got.sort();
        assert_eq!(got, ["alpha", "beta"]);
    }

    #[test]
    fn a_changed_file_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slugs.txt");
        std::fs::write(&path, "one\n").unwrap();
        let list = SlugList::load(&path);
        assert!(list.contains("one") && !list.contains("two"));
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        list.reload_if_changed();
        assert!(list.contains("two"));
    }
}
