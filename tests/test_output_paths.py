"""Output paths and command-line counts are checked before any model loads or any measuring starts."""

import os
import re
import tempfile

import pytest

from workshop_utils import models
from workshop_utils.__main__ import main
from workshop_utils.bench import bench
from workshop_utils.chat import main as chat_main
from workshop_utils.paths import output_file
from workshop_utils.timing import main as timing_main

NOTEBOOKS = os.path.join(os.path.dirname(__file__), os.pardir, "notebooks")


@pytest.fixture
def no_model(monkeypatch):
    """load_model fails the test: every check here must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the argument was checked")

    monkeypatch.setattr(models, "load_model", refuse)


def _bad_output_paths(tmp_path):
    (tmp_path / "a_file").write_text("x")
    return {"a folder": (tmp_path, "is a folder. Fix: give a file name"),
            "under a file": (tmp_path / "a_file" / "bench.json", "a_file is a file. Fix: choose a folder path")}


@pytest.mark.parametrize("case", ["a folder", "under a file"])
def test_bench_json_path_is_checked_before_the_model_loads(tmp_path, capsys, no_model, case):
    path, message = _bad_output_paths(tmp_path)[case]
    assert main(["bench", "--json", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err


def test_bench_function_checks_its_json_path_before_measuring(tmp_path, no_forward_model):
    with pytest.raises(ValueError, match="is a folder. Fix"):
        bench(no_forward_model(vocab_size=96), None, str(tmp_path))  # no tokenizer: measuring would fail otherwise


def test_an_unwritable_folder_is_found_before_the_work(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)  # (root ignores chmod: make the probe fail)
    with pytest.raises(ValueError, match="Cannot write in the folder of the bench JSON file.*Permission denied.*Fix"):
        output_file(tmp_path / "new" / "bench.json", "bench JSON file")


def test_bench_json_folder_is_made(tmp_path):
    assert output_file(tmp_path / "a" / "b" / "bench.json").parent.is_dir()
    assert not list((tmp_path / "a" / "b").iterdir()), "the write probe leaves nothing behind"


@pytest.mark.parametrize("case", ["existing file", "under a file"])
def test_student_output_folder(tmp_path, capsys, case):
    (tmp_path / "a_file").write_text("x")
    out = {"existing file": tmp_path / "a_file", "under a file": tmp_path / "a_file" / "student"}[case]
    assert main(["student", str(out), "--notebooks", NOTEBOOKS]) == 1
    err = capsys.readouterr().err
    assert "error: The student folder" in err and "Fix: choose a folder path" in err
    assert (tmp_path / "a_file").read_text() == "x"


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_student_without_notebooks_says_so(tmp_path, capsys, case):
    notebooks = tmp_path / "notebooks"
    if case == "empty":
        notebooks.mkdir()
    assert main(["student", str(tmp_path / "out"), "--notebooks", str(notebooks)]) == 1
    assert "Fix: run from the repository root, or pass --notebooks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing made when there is nothing to write"


def test_student_refuses_to_overwrite_the_teacher_notebooks(tmp_path, capsys):
    (tmp_path / "00_x.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    assert main(["student", str(tmp_path), "--notebooks", str(tmp_path)]) == 1
    assert "the solutions would be overwritten" in capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["cot", "-n", "-3"], "-n"), (["cot", "-n", "0"], "-n"), (["cot", "--batch-size", "0"], "--batch-size"),
    (["cot", "--reason-tokens", "0"], "--reason-tokens")])
def test_chat_command_counts(capsys, no_model, argv, option):
    with pytest.raises(SystemExit) as done:
        chat_main(argv)
    assert done.value.code == 2
    assert f"argument {option}: must be a whole number of at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [(["--lengths", "0"], "--lengths"), (["--lengths", "16", "-4"], "--lengths"),
                                          (["--tokens", "0"], "--tokens"), (["--repeats", "0"], "--repeats")])
def test_timing_command_counts(capsys, no_model, argv, option):
    with pytest.raises(SystemExit) as done:
        timing_main(argv)
    assert done.value.code == 2
    assert f"argument {option}: must be a whole number of at least 1" in capsys.readouterr().err


def test_write_text_atomic_leaves_an_ordinary_file_and_no_temporary(tmp_path):
    from workshop_utils.paths import write_text_atomic

    target = tmp_path / "figures.json"
    write_text_atomic(target, "naïve 😀\n")
    assert target.read_text(encoding="utf-8") == "naïve 😀\n"
    assert target.stat().st_mode & 0o777 == 0o644  # not the temporary file's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["figures.json"]


def test_build_corpus_writes_through_the_atomic_writer(tmp_path):
    import nbformat

    from workshop_utils import bpe_lab

    (tmp_path / "lessons").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "lessons" / "01.md").write_text("lesson text", encoding="utf-8")
    (tmp_path / "README.md").write_text("readme", encoding="utf-8")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("cell text")]),
                   tmp_path / "notebooks" / "01.ipynb")
    out = tmp_path / "corpus.txt"
    size = bpe_lab.build_corpus(tmp_path, out)
    assert out.read_text(encoding="utf-8") == "lesson text\n\nreadme\n\ncell text\n"
    assert size == out.stat().st_size and out.stat().st_mode & 0o777 == 0o644
