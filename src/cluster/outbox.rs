//! Views counted while Redis did not answer: written durably to the table `outbox` of the
//! `--db` redb file by a thread of their own (one transaction per burst), replayed in order
//! with the same script once Redis answers, and deleted only after Redis took them. The
//! script's op id makes a replay of a view Redis already has a no-op, so each counts once.
//!
//! A row is deleted in the transaction that adds its view to the node's record (the same
//! file) when Redis counted it: the record takes each replayed view exactly when its row
//! goes, whatever a crash cuts short. Until then a view Redis counted is in Redis's part of
//! this node and not in the record; a rebuild counts such rows with the record (see
//! [`Outbox::views`]), so it does not adopt them from the part too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;

use crate::cluster::counter::View;
use crate::storage::store::{RedbStore, StoreError};

/// Views not yet in Redis: sequence number → "slug reader op day".
const OUTBOX: TableDefinition<u64, &str> = TableDefinition::new("outbox");

/// Views replayed per round trip to the outbox thread.
pub(crate) const REPLAY_BATCH: usize = 256;

enum Command {
    Add(View),
    Take(usize, oneshot::Sender<Result<Vec<(u64, View)>, StoreError>>),
    Settle(
        Vec<(u64, bool)>,
        oneshot::Sender<Result<Vec<u64>, StoreError>>,
    ),
    Shutdown(oneshot::Sender<()>),
}

/// A replayed row Redis answered.
pub(crate) struct Done {
    pub row: u64,
    pub view: View,
    /// Redis counted it (its first run did): the record takes it as the row goes.
    pub counted: bool,
    /// Still pending for its post: not confirmed by its announcement already.
    pub pending: bool,
}

/// Handle to the outbox thread; its counts are kept in memory so readers never wait for it.
pub(crate) struct Outbox {
    tx: mpsc::Sender<Command>,
    /// Views per post not yet in Redis (queued or written).
    pending: Arc<Mutex<HashMap<String, u64>>>,
    total: AtomicU64,
}

impl Outbox {
    /// Takes the redb file (the cluster keeps its totals in Redis; the file holds the outbox).
    pub(crate) fn start(mut store: RedbStore) -> Result<Self, StoreError> {
        let existing = read_all(&mut store, usize::MAX)?;
        let mut pending: HashMap<String, u64> = HashMap::new();
        for (_, view) in &existing {
            *pending.entry(view.slug.clone()).or_default() += 1;
        }
        if !existing.is_empty() {
            tracing::info!(
                views = existing.len(),
                "outbox holds views for Redis from before"
            );
        }
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("viewcounter-outbox".into())
            .spawn(move || run(store, rx))
            .map_err(StoreError::storage)?;
        Ok(Self {
            tx,
            total: AtomicU64::new(existing.len() as u64),
            pending: Arc::new(Mutex::new(pending)),
        })
    }

    /// Queues a view for Redis; never blocks (the thread writes it within milliseconds).
    pub(crate) fn add(&self, view: View) {
        *self.lock().entry(view.slug.clone()).or_default() += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Command::Add(view)).is_err() {
            tracing::error!("the outbox has stopped: a view counted during shutdown is lost");
        }
    }

    /// Views in the outbox, all posts: not yet in Redis, or confirmed there and not yet deleted
    /// by their replay.
    pub(crate) fn len(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Views of one post not yet in Redis.
    pub(crate) fn pending_for(&self, slug: &str) -> u64 {
        self.lock().get(slug).copied().unwrap_or(0)
    }

    /// The oldest `n` views written.
    pub(crate) async fn oldest(&self, n: usize) -> Result<Vec<(u64, View)>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Take(n, reply))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Every view in the outbox (a rebuild asks Redis which of them it counted already).
    pub(crate) async fn views(&self) -> Result<Vec<View>, StoreError> {
        Ok(self
            .oldest(usize::MAX)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Forgets views Redis has taken, and the record takes those it counted, in one
    /// transaction of the file. Gives back the views recorded.
    pub(crate) async fn settle(&self, done: Vec<Done>) -> Result<Vec<View>, StoreError> {
        let rows = done.iter().map(|d| (d.row, d.counted)).collect();
        let (reply, rx) = oneshot::channel();
        self.send(Command::Settle(rows, reply))?;
        let removed = rx.await.map_err(|_| stopped())??;
        let mut recorded = Vec::new();
        for d in done {
            if !removed.contains(&d.row) {
                continue;
            }
            if d.pending {
                self.confirmed(&d.view.slug);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
            if d.counted {
                recorded.push(d.view);
            }
        }
        Ok(recorded)
    }

    /// A view of `slug` is known to be in Redis: no longer pending for its post, though its
    /// row stays (and counts in [`Outbox::len`]) until its replay deletes it.
    pub(crate) fn confirmed(&self, slug: &str) {
        let mut pending = self.lock();
        if let Some(n) = pending.get_mut(slug) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pending.remove(slug);
            }
        }
    }

    /// Writes everything queued and stops the thread.
    pub(crate) async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    fn send(&self, cmd: Command) -> Result<(), StoreError> {
        self.tx.send(cmd).map_err(|_| stopped())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn stopped() -> StoreError {
    StoreError::Storage("the outbox has stopped".into())
}

fn run(mut store: RedbStore, rx: mpsc::Receiver<Command>) {
    let mut queued: Vec<View> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // A burst of views is one transaction (one fsync).
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Add(view) => queued.push(view),
                other => {
                    write(&mut store, &mut queued);
                    if let Err(stopped) = answer(&mut store, other) {
                        // The file is closed before the answer: a process exiting right
                        // after leaves it cleanly closed.
                        drop(store);
                        let _ = stopped.send(());
                        return;
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        write(&mut store, &mut queued);
    }
    write(&mut store, &mut queued);
}

/// Answers one command; `Err` with whom to tell once stopped.
fn answer(store: &mut RedbStore, cmd: Command) -> Result<(), oneshot::Sender<()>> {
    match cmd {
        Command::Add(_) => unreachable!("queued by run"),
        Command::Take(n, reply) => {
            let _ = reply.send(read_all(store, n));
        }
        Command::Settle(done, reply) => {
            let _ = reply.send(settle(store, &done));
        }
        Command::Shutdown(reply) => return Err(reply),
    }
    Ok(())
}

/// Writes the queued views; on failure they stay queued and are tried with the next burst.
fn write(store: &mut RedbStore, queued: &mut Vec<View>) {
    if queued.is_empty() {
        return;
    }
    let written = store.with_db(|db| {
        let txn = db.begin_write().map_err(StoreError::storage)?;
        {
            let mut table = txn.open_table(OUTBOX).map_err(StoreError::storage)?;
            let first = table
                .last()
                .map_err(StoreError::storage)?
                .map_or(0, |(k, _)| k.value() + 1);
            for (id, view) in (first..).zip(queued.iter()) {
                let row = format!("{} {} {} {}", view.slug, view.reader, view.op, view.day);
                table
                    .insert(id, row.as_str())
                    .map_err(StoreError::storage)?;
            }
        }
        txn.commit().map_err(StoreError::storage)
    });
    match written {
        Ok(()) => queued.clear(),
        Err(e) => {
            tracing::error!(error = %e, views = queued.len(), "cannot write the outbox; keeping the views in memory")
        }
    }
}

fn read_all(store: &mut RedbStore, n: usize) -> Result<Vec<(u64, View)>, StoreError> {
    store.with_db(|db| {
        let txn = db.begin_write().map_err(StoreError::storage)?;
        let mut rows = Vec::new();
        {
            let table = txn.open_table(OUTBOX).map_err(StoreError::storage)?;
            if table.len().map_err(StoreError::storage)? == 0 {
                return Ok(rows);
            }
            for row in table.iter().map_err(StoreError::storage)?.take(n) {
                let (key, value) = row.map_err(StoreError::storage)?;
                match parse(value.value()) {
                    Some(view) => rows.push((key.value(), view)),
                    None => tracing::warn!(row = value.value(), "skipping a malformed outbox row"),
                }
            }
        }
        txn.abort().map_err(StoreError::storage)?;
        Ok(rows)
    })
}

/// Deletes the rows `done` (row, counted) and adds the counted ones' views to the record, in
/// one transaction; gives back the rows it deleted.
fn settle(store: &mut RedbStore, done: &[(u64, bool)]) -> Result<Vec<u64>, StoreError> {
    let mut removed = Vec::with_capacity(done.len());
    store.add_after(|txn| {
        let mut table = txn.open_table(OUTBOX).map_err(StoreError::storage)?;
        let (mut totals, mut days) = (HashMap::<String, u64>::new(), HashMap::new());
        for &(id, counted) in done {
            let Some(row) = table.remove(id).map_err(StoreError::storage)? else {
                continue;
            };
            removed.push(id);
            match parse(row.value()) {
                Some(view) if counted => {
                    *days.entry((view.slug.clone(), view.day)).or_default() += 1;
                    *totals.entry(view.slug).or_default() += 1;
                }
                _ => {}
            }
        }
        let days = days.into_iter().map(|((s, d), v)| (s, d, v)).collect();
        Ok((totals.into_iter().collect(), days))
    })?;
    Ok(removed)
}

fn parse(row: &str) -> Option<View> {
    let mut parts = row.split(' ');
    let view = View {
        slug: parts.next()?.to_owned(),
        reader: parts.next()?.to_owned(),
        op: parts.next()?.to_owned(),
        day: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::store::Store;

    fn view(n: u32) -> View {
        View {
            slug: "a/b".into(),
            reader: format!("reader-{n:012}"),
            op: format!("node-1:{n:016x}"),
            day: 20261201,
        }
    }

    #[tokio::test]
    async fn views_survive_a_restart_in_order_until_settled_and_the_record_takes_the_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.redb");
        {
            let outbox = Outbox::start(RedbStore::open(&path).unwrap()).unwrap();
            for n in 0..3 {
                outbox.add(view(n));
            }
            assert_eq!(outbox.pending_for("a/b"), 3);
            outbox.shutdown().await;
        }
        let mut db = RedbStore::open(&path).unwrap();
        let mut record = db.share().unwrap();
        let outbox = Outbox::start(db).unwrap();
        assert_eq!(outbox.len(), 3, "written durably");
        let rows = outbox.oldest(2).await.unwrap();
        assert_eq!(
            rows.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
            [view(0), view(1)]
        );
        // The first counted, the second a duplicate; each asked for once more (a replay of a
        // batch whose answer was lost): deleted, and recorded, once.
        let done = |rows: &[(u64, View)]| {
            (rows.iter().enumerate())
                .map(|(i, (row, view))| Done {
                    row: *row,
                    view: view.clone(),
                    counted: i == 0,
                    pending: true,
                })
                .collect()
        };
        assert_eq!(outbox.settle(done(&rows)).await.unwrap(), [view(0)]);
        assert_eq!(outbox.settle(done(&rows)).await.unwrap(), []);
        assert_eq!(record.load("a/b").unwrap(), Some(1));
        assert_eq!(record.days_of("a/b", &[20261201]).unwrap(), [1]);
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox.pending_for("a/b"), 1);
        let rest = outbox.oldest(10).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, view(2));
    }
}
