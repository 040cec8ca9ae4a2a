"""The training tests' tiny teacher/student pair and small text, shared."""

from tests.train.conftest import _one_thread, small_text, student_dir  # noqa: F401
