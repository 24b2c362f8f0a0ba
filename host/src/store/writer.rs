//! SQLite's one writer. warden's own writes take turns here instead of meeting in SQLite's
//! busy handler (which sleeps, and makes runs late), and the hot ones (a claim, a run's
//! commit) run on the connection this turn holds: one command to the connection's worker
//! thread, where a statement through the pool costs a hand-out and a ping on its return
//! too, each a wake-up of another thread.

use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::{Mutex, MutexGuard};

/// The turn to write, and the connection kept between turns (opened on first use).
#[derive(Debug, Default)]
pub(crate) struct Writer {
    conn: Option<SqliteConnection>,
}

/// Whose turn it is: `Mutex<Writer>` shared by the store's clones.
pub(crate) type WriteGate = Mutex<Writer>;

/// This process's turn to write, with the writer connection taken out of its slot while
/// the turn lasts. A turn dropped halfway (its caller cancelled) drops the connection with
/// it: closing it rolls back whatever it left open, and the next turn opens another.
pub(crate) struct Turn<'a> {
    slot: MutexGuard<'a, Writer>,
    conn: Option<SqliteConnection>,
}

impl<'a> Turn<'a> {
    pub(crate) async fn take(gate: &'a WriteGate) -> Turn<'a> {
        let mut slot = gate.lock().await;
        let conn = slot.conn.take();
        Turn { slot, conn }
    }

    /// The writer connection, opened with the pool's options when there is none.
    pub(crate) async fn conn(&mut self, options: &SqliteConnectOptions) -> Result<&mut SqliteConnection, sqlx::Error> {
        if self.conn.is_none() {
            self.conn = Some(options.connect().await?);
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }

    /// Ends the turn, keeping the connection for the next. After a failure, whatever
    /// transaction is still open on it is rolled back first; one that cannot be (or a
    /// connection that broke) is closed, and the next turn opens another.
    pub(crate) async fn end(mut self, failed: bool) {
        if failed && let Some(conn) = self.conn.as_mut() {
            let rollback = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            if rollback.is_err_and(|e| !e.to_string().contains("no transaction is active")) {
                self.conn = None;
            }
        }
        self.slot.conn = self.conn.take();
    }
}
