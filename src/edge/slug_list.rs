//! Which posts exist: the allow-list file (re-read on SIGHUP and when it changes), or any
//! well-formed slug up to `--max-slugs` posts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use crate::edge::limits::{ClientKey, NewPostCharge, NewPostRate};
use crate::edge::slug::Slug;
use crate::storage::writer::Admission;

/// How often the file's modification time is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Used when the allow-list file does not exist, so a fresh binary serves its demo.
pub const EMBEDDED_DEMO_SLUGS: &str = include_str!("../../data/slugs.txt");

pub enum SlugPolicy {
    Listed(Arc<SlugList>),
    /// `--allow-any-slug`: up to `max` posts, each client creating at most its share of them.
    Any {
        max: u64,
        new_posts: Arc<NewPostRate>,
    },
}

impl SlugPolicy {
    /// How a well-formed slug asked for by `client` may be admitted; `None` when it is not on
    /// the list.
    pub fn admission(&self, slug: &Slug, client: ClientKey) -> Option<Admission> {
        match self {
            Self::Listed(list) => list.contains(slug.as_str()).then_some(Admission::Listed),
            Self::Any { max, new_posts } => Some(Admission::UpTo {
                cap: *max,
                charge: NewPostCharge {
                    rate: Arc::clone(new_posts),
                    client,
                },
            }),
        }
    }
}

pub struct SlugList {
    path: PathBuf,
    slugs: RwLock<Arc<HashSet<Box<str>>>>,
    stamp: RwLock<Option<(SystemTime, u64)>>,
}

impl SlugList {
    pub fn load(path: &Path) -> Arc<Self> {
        let list = Arc::new(Self {
            path: path.to_owned(),
            slugs: RwLock::new(Arc::default()),
            stamp: RwLock::new(None),
        });
        list.reload();
        list
    }

    pub fn contains(&self, slug: &str) -> bool {
        self.slugs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(slug)
    }

    /// Reads the file again; a missing file means the embedded demo list.
    pub fn reload(&self) {
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
    pub fn reload_if_changed(&self) {
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
