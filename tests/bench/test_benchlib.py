"""benchlib's provenance: the code that ran differs from the commit when a tracked file changed or a new file
lies untracked under greenlm/ or bench/ (results, README and notes do not count)."""

import shutil
import subprocess

import pytest
from benchlib import git_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, timeout=30)


@pytest.fixture
def repo(tmp_path):
    for path in ("greenlm/__init__.py", "bench/engines.py", "bench/results/engines.json", "README.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "start")
    return tmp_path


def test_clean_tree_is_not_dirty(repo):
    record = git_commit(repo)
    assert len(record["commit"]) == 40 and record["dirty"] is False and record["uncommitted_files"] == []


@pytest.mark.parametrize("path", ["greenlm/new_module.py", "greenlm/sub/deep.py", "bench/newbench.py"])
def test_an_untracked_file_under_the_code_is_dirty(repo, path):
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text("print(1)\n")
    record = git_commit(repo)
    assert record["dirty"] is True and record["uncommitted_files"] == [path]


def test_a_changed_tracked_file_is_dirty(repo):
    (repo / "bench" / "engines.py").write_text("y\n")
    assert git_commit(repo)["uncommitted_files"] == ["bench/engines.py"]


def test_results_readme_and_notes_do_not_count(repo):
    (repo / "bench" / "results" / "engines.json").write_text("{}\n")
    (repo / "bench" / "results" / "new.json").write_text("{}\n")
    (repo / "README.md").write_text("edited\n")
    (repo / "notes.md").write_text("notes\n")
    assert git_commit(repo)["dirty"] is False
