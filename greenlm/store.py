"""SQLite results store: one row per measured run (later: per variant and per optimizer candidate).

Each write is one transaction, so a row is there whole or not at all; WAL mode lets a reader list runs
while another process writes. Headline figures have their own columns for querying; the full record is JSON.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path

from greenlm.errors import GreenlmError
from greenlm.paths import default_db_path
from greenlm.version import __version__

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL,                -- measure | eval | candidate | ...
    model TEXT NOT NULL,
    model_fingerprint TEXT,
    engine TEXT,
    meter TEXT,
    energy_source TEXT,                -- measured | estimated
    variant_id TEXT,                   -- set for compressed variants
    parent TEXT,                       -- the model a variant was made from
    recipe_json TEXT,                  -- the compression recipe that rebuilds the variant
    execution TEXT,                    -- real | simulated (compressed variants)
    decode_j_per_token REAL,
    prefill_j_per_token REAL,
    decode_tokens_per_s REAL,
    carbon_g_per_1k_tokens REAL,
    host TEXT NOT NULL,
    greenlm_version TEXT NOT NULL,
    record_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);
CREATE INDEX IF NOT EXISTS runs_model ON runs(model);
"""
COLUMNS = ("decode_j_per_token", "prefill_j_per_token", "decode_tokens_per_s", "carbon_g_per_1k_tokens")


class Store:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=30)
            self._conn.row_factory = sqlite3.Row
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise GreenlmError(
                    f"results store {self.path} was written by a newer greenlm (schema {version}): upgrade greenlm"
                )
            self._conn.execute("PRAGMA journal_mode=WAL")
            with self._conn:
                self._conn.executescript(_SCHEMA)
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise GreenlmError(
                f"cannot open results store {self.path}: {exc} (pass another file with --db)"
            ) from None

    def add(self, kind: str, record: dict, **columns) -> str:
        """Insert one row atomically and return its run_id."""
        run_id = uuid.uuid4().hex[:12]
        record = dict(record, run_id=run_id)
        row = {
            "run_id": run_id,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "kind": kind,
            "model": record.get("model", ""),
            "model_fingerprint": (record.get("model_identity") or {}).get("fingerprint"),
            "engine": record.get("engine"),
            "meter": record.get("meter"),
            "energy_source": record.get("energy_source"),
            "host": socket.gethostname(),
            "greenlm_version": __version__,
            "record_json": json.dumps(record, default=str),
        }
        row.update({c: record.get(c) for c in COLUMNS})
        row.update(columns)
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._conn:  # one transaction: the row is there whole or not at all
            self._conn.execute(f"INSERT INTO runs ({names}) VALUES ({marks})", tuple(row.values()))
        return run_id

    def add_measurement(self, result) -> str:
        return self.add("measure", result.to_dict())

    def runs(self, limit: int = 20, kind: str | None = None) -> list[dict]:
        """Newest first."""
        sql = "SELECT * FROM runs"
        args: tuple = ()
        if kind:
            sql += " WHERE kind = ?"
            args = (kind,)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        rows = self._conn.execute(sql, args + (limit,)).fetchall()
        return [dict(r) for r in rows]

    def runs_for_model(self, model_fingerprint: str, kind: str | None = None, limit: int = 100) -> list[dict]:
        """Rows of one model (by content fingerprint), newest first."""
        sql = "SELECT * FROM runs WHERE model_fingerprint = ?"
        args: tuple = (model_fingerprint,)
        if kind:
            sql += " AND kind = ?"
            args += (kind,)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        return [dict(r) for r in self._conn.execute(sql, args + (limit,)).fetchall()]

    def get(self, run_id: str) -> dict | None:
        row = self._conn.execute("SELECT record_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
