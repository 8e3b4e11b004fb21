"""A record's `env.git_commit` names the code that ran: `-dirty` for changed code only, not for the
run folder a launch itself rewrites (results/NAME/jobs.json is tracked in a committed study)."""

from __future__ import annotations

import subprocess

import pytest

from bench.core.records import git_commit


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    files = {"bench/core/records.py": "x = 1\n", "models/vt.py": "y = 2\n", "results/study/jobs.json": "[]\n",
             "docs/guide.md": "# guide\n", "README.md": "# readme\n", "experiments/g.yaml": "name: g\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "init")
    return tmp_path


def test_clean_tree_is_the_bare_commit(repo):
    assert git_commit(repo / "bench" / "core") == _git(repo, "rev-parse", "HEAD")


def test_run_folder_docs_and_markdown_changes_are_not_dirty(repo):
    (repo / "results/study/jobs.json").write_text('[{"job_id": "1"}]\n')
    (repo / "docs/guide.md").write_text("# guide, edited\n")
    (repo / "README.md").write_text("# readme, edited\n")
    (repo / "untracked.py").write_text("z = 3\n")  # untracked files never count
    assert git_commit(repo / "bench" / "core") == _git(repo, "rev-parse", "HEAD")


@pytest.mark.parametrize("changed", ["bench/core/records.py", "models/vt.py", "experiments/g.yaml"])
def test_changed_code_or_grid_is_dirty(repo, changed):
    (repo / changed).write_text("changed = True\n")
    assert git_commit(repo / "bench" / "core") == _git(repo, "rev-parse", "HEAD") + "-dirty"


def test_outside_git_the_environment_names_the_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("VTBENCH_GIT_COMMIT", "abc123")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find a repository above
    assert git_commit(tmp_path) == "abc123"
