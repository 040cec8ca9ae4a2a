"""Where files, batches and every finished request line are kept, so a server killed mid-batch (kill -9)
resumes where it stopped, answering no request twice and losing none.

    STATE_DIR/files/<file id>.jsonl   each uploaded or produced file, written whole or not at all
    STATE_DIR/defer.db                SQLite (WAL): the file and batch objects, one row per finished line
                                      (unique per batch and custom_id), the replay origin, learned rates

A line's result is committed in one transaction the moment it finishes; a line in flight at a crash has no
row and runs again after the restart; the output file is written from the rows at the end, so a custom_id
appears in it once.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from pathlib import Path

from greenlm.errors import GreenlmError
from greenlm.io import atomic_file
from greenlm.paths import default_db_path

STATE_DIR_ENV = "GREENLM_STATE_DIR"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    lines INTEGER NOT NULL,
    info_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    record_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    result_json TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    energy_j REAL NOT NULL DEFAULT 0,
    carbon_g REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value_json TEXT NOT NULL);
"""
TERMINAL = ("completed", "failed", "expired", "cancelled")


def default_state_dir() -> Path:
    """`GREENLM_STATE_DIR`, else `defer/` beside the results store (the user data dir, or $GREENLM_DB's)."""
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env) if env else default_db_path().parent / "defer"


class DeferState:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_state_dir()
        self.files_dir = self.root / "files"
        try:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.root / "defer.db", timeout=30, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
            with self._conn:
                self._conn.executescript(_SCHEMA)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise GreenlmError(
                f"cannot open the state directory {self.root}: {exc} (pass another --state-dir)"
            ) from None
        self._lock = threading.Lock()
        self._owner_fd: int | None = None

    def acquire(self) -> int | None:
        """Own the directory: one server at a time runs the batches kept here (a lock the kernel drops when
        the process dies, even by kill -9). None when this process owns it, else the owner's pid (0 unknown)."""
        if self._owner_fd is not None:
            return None
        fd = os.open(self.root / "owner.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            return int(text) if text.isdigit() else 0
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._owner_fd = fd
        return None

    @property
    def owned(self) -> bool:
        return self._owner_fd is not None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        if self._owner_fd is not None:
            os.close(self._owner_fd)  # closing the descriptor releases the lock
            self._owner_fd = None

    # ---- files --------------------------------------------------------------------------------------------
    def file_path(self, file_id: str) -> Path:
        return self.files_dir / f"{file_id}.jsonl"

    def add_file(self, record: dict, content: bytes, info: dict) -> None:
        """The content first (whole or not at all), then its row: a row always has its file."""
        with atomic_file(self.file_path(record["id"]), overwrite=True, check=False) as tmp:
            tmp.write_bytes(content)
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO files (id, created_at, bytes, filename, purpose, lines, info_json) VALUES (?,?,?,?,?,?,?)",
                (
                    record["id"], record["created_at"], record["bytes"], record["filename"], record["purpose"],
                    info.get("lines", 0), json.dumps(info),
                ),
            )  # fmt: skip

    def get_file(self, file_id: str) -> dict | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return _file(row) if row else None

    def list_files(
        self, *, purpose: str | None, after: str | None, limit: int, ascending: bool
    ) -> tuple[list[dict], bool]:
        where, args = [], []
        if purpose:
            where.append("purpose = ?")
            args.append(purpose)
        with self._lock:
            if after is not None:
                row = self._conn.execute("SELECT rowid FROM files WHERE id = ?", (after,)).fetchone()
                if row is None:
                    return [], False
                where.append("rowid > ?" if ascending else "rowid < ?")
                args.append(row[0])
            sql = "SELECT * FROM files" + (f" WHERE {' AND '.join(where)}" if where else "")
            sql += f" ORDER BY rowid {'ASC' if ascending else 'DESC'} LIMIT ?"
            rows = self._conn.execute(sql, (*args, limit + 1)).fetchall()
        return [_file(r) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str) -> bool:
        with self._lock, self._conn:
            gone = self._conn.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
        self.file_path(file_id).unlink(missing_ok=True)
        return gone

    def file_in_use(self, file_id: str) -> str | None:
        """The id of an unfinished batch that reads `file_id`, if any."""
        for batch in self.unfinished_batches():
            if batch["input_file_id"] == file_id:
                return batch["id"]
        return None

    # ---- batches ------------------------------------------------------------------------------------------
    def put_batch(self, record: dict) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO batches (id, created_at, status, record_json) VALUES (?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET status = excluded.status, record_json = excluded.record_json",
                (record["id"], record["created_at"], record["status"], json.dumps(record)),
            )

    def update_batch(self, batch_id: str, changes: dict, *, unless: tuple[str, ...] = ()) -> dict | None:
        """Apply `changes` to a batch in one step (another thread may be changing it too), unless its status
        is one of `unless`; the record after, or None when it was left as it was (or is not there)."""
        with self._lock, self._conn:
            row = self._conn.execute("SELECT record_json FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None:
                return None
            record = json.loads(row[0])
            if record["status"] in unless:
                return None
            record.update(changes)
            self._conn.execute(
                "UPDATE batches SET status = ?, record_json = ? WHERE id = ?",
                (record["status"], json.dumps(record), batch_id),
            )
            return record

    def get_batch(self, batch_id: str) -> dict | None:
        with self._lock:
            row = self._conn.execute("SELECT record_json FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def list_batches(self, *, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first, as OpenAI lists them."""
        with self._lock:
            args: tuple = ()
            sql = "SELECT record_json FROM batches"
            if after is not None:
                row = self._conn.execute("SELECT rowid FROM batches WHERE id = ?", (after,)).fetchone()
                if row is None:
                    return [], False
                sql += " WHERE rowid < ?"
                args = (row[0],)
            rows = self._conn.execute(sql + " ORDER BY rowid DESC LIMIT ?", (*args, limit + 1)).fetchall()
        return [json.loads(r[0]) for r in rows[:limit]], len(rows) > limit

    def unfinished_batches(self) -> list[dict]:
        marks = ",".join("?" for _ in TERMINAL)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT record_json FROM batches WHERE status NOT IN ({marks}) ORDER BY rowid", TERMINAL
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # ---- finished lines -----------------------------------------------------------------------------------
    def add_result(
        self,
        batch_id: str,
        custom_id: str,
        line: int,
        ok: bool,
        result: dict,
        usage: dict,
        finished_at: float,
    ) -> bool:
        """Keep one finished line (one transaction). False when that custom_id already has a row: the first
        answer stands, a second is dropped."""
        with self._lock, self._conn:
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO results (batch_id, custom_id, line, ok, result_json, prompt_tokens, "
                "completion_tokens, energy_j, carbon_g, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    batch_id, custom_id, line, int(ok), json.dumps(result), int(usage.get("prompt_tokens") or 0),
                    int(usage.get("completion_tokens") or 0), float(usage.get("energy_j") or 0.0),
                    float(usage.get("carbon_g") or 0.0), finished_at,
                ),
            )  # fmt: skip
            return cursor.rowcount > 0

    def finished_lines(self, batch_id: str) -> set[int]:
        with self._lock:
            rows = self._conn.execute("SELECT line FROM results WHERE batch_id = ?", (batch_id,)).fetchall()
        return {r[0] for r in rows}

    def results(self, batch_id: str) -> list[dict]:
        """Every finished line in input order: {line, custom_id, ok, result}."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT line, custom_id, ok, result_json FROM results WHERE batch_id = ? ORDER BY line",
                (batch_id,),
            ).fetchall()
        return [{"line": r[0], "custom_id": r[1], "ok": bool(r[2]), "result": json.loads(r[3])} for r in rows]

    def totals(self, batch_id: str) -> dict:
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(ok), 0), COALESCE(SUM(prompt_tokens), 0), "
                "COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(energy_j), 0), COALESCE(SUM(carbon_g), 0) "
                "FROM results WHERE batch_id = ?",
                (batch_id,),
            ).fetchone()
        return {
            "finished": row[0], "completed": row[1], "failed": row[0] - row[1], "prompt_tokens": row[2],
            "completion_tokens": row[3], "energy_j": row[4], "carbon_g": row[5],
        }  # fmt: skip

    # ---- small facts (the replay origin, learned rates) ---------------------------------------------------
    def get_meta(self, key: str):
        with self._lock:
            row = self._conn.execute("SELECT value_json FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO meta (key, value_json) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value_json = excluded.value_json",
                (key, json.dumps(value)),
            )


def _file(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
        "expires_at": None,
        "greenlm_lines": row["lines"],
        "_info": json.loads(row["info_json"]),
    }
