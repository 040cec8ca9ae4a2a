import json
import sqlite3

import pytest

from greenlm.errors import GreenlmError
from greenlm.store import SCHEMA_VERSION, Store


def test_rows_newest_first_with_columns(tmp_path):
    with Store(tmp_path / "s.db") as store:
        first = store.add(
            "measure",
            {"model": "a", "decode_j_per_token": 0.5, "meter": "cpu-model", "energy_source": "estimated"},
        )
        second = store.add("measure", {"model": "b", "decode_j_per_token": 0.25})
        rows = store.runs()
        assert [r["run_id"] for r in rows] == [second, first]
        assert rows[1]["decode_j_per_token"] == 0.5 and rows[1]["energy_source"] == "estimated"
        assert store.get(first)["run_id"] == first
        assert json.loads(rows[0]["record_json"])["model"] == "b"


def test_variant_columns_ready(tmp_path):
    with Store(tmp_path / "s.db") as store:
        run = store.add(
            "candidate",
            {"model": "v"},
            variant_id="v1",
            parent="smollm2-135m",
            recipe_json='{"steps": []}',
            execution="simulated",
        )
        row = store.runs(kind="candidate")[0]
        assert row["run_id"] == run and row["execution"] == "simulated" and row["parent"] == "smollm2-135m"


def test_failed_insert_leaves_nothing(tmp_path):
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(sqlite3.Error):
            store.add("measure", {"model": "x"}, no_such_column=1)
        assert store.runs() == []


def test_newer_schema_refused(tmp_path):
    path = tmp_path / "s.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(GreenlmError, match="newer greenlm"):
        Store(path)


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(GreenlmError, match="cannot open results store"):
        Store(path)
