"""Deferral tests share serve's servers: `greenlm serve` in a subprocess on 127.0.0.1, the tiny chat model."""

from tests.distill.conftest import small_text, student_dir  # noqa: F401
from tests.serve.conftest import ServerProcess, chat_model_dir, start_server  # noqa: F401


def grid_csv(path, values, step_s: int = 60, start: str = "2020-01-01T00:00:00Z") -> str:
    """A (timestamp, g/kWh) CSV with one row every `step_s`."""
    from datetime import datetime, timedelta

    t0 = datetime.fromisoformat(start.replace("Z", "+00:00"))
    rows = ["timestamp,g_per_kwh"] + [
        f"{(t0 + timedelta(seconds=i * step_s)).isoformat()},{v}" for i, v in enumerate(values)
    ]
    path.write_text("\n".join(rows) + "\n")
    return str(path)
