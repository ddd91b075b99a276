"""ufkit.progress: bars go to UFKIT_PROGRESS_FILE when it is set (what `make book` tails), else to stderr."""

import re

from ufkit import progress

# tqdm's meter: "<desc>: 100%|...| 5/5 [00:00<00:00, 123.45it/s]", a rate and an ETA in the brackets.
RATE = re.compile(r"\d+/\d+ \[[\d:]+<[\d:?]+, +[\d.?]+ ?it/s\]")


def test_bar_goes_to_the_file_when_the_variable_is_set(tmp_path, monkeypatch, capsys):
    log = tmp_path / "progress.log"
    log.write_text("earlier line\n")
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(log))
    progress.announce("chapter 0: fine-tuning")
    for _ in progress.progress_bar(range(5), desc="fine-tuning"):
        pass
    bar = progress.progress_bar(total=3, desc="latency table")
    bar.update(3)
    bar.close()
    text = log.read_text()
    assert text.startswith("earlier line\n")  # appended, not truncated
    assert re.search(r"\[\d\d:\d\d:\d\d\] chapter 0: fine-tuning\n", text)
    assert re.search(r"fine-tuning: 100%.*" + RATE.pattern, text)
    assert re.search(r"latency table: 100%.*3/3", text)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_bar_goes_to_stderr_when_the_variable_is_unset(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(progress.PROGRESS_FILE_ENV, raising=False)
    for _ in progress.progress_bar(range(4), desc="distillation"):
        pass
    progress.announce("chapter 2: students")
    err = capsys.readouterr().err
    assert re.search(r"distillation: 100%.*" + RATE.pattern, err)
    assert "chapter 2: students" in err
    assert list(tmp_path.iterdir()) == []


def test_disabled_bar_writes_nothing(tmp_path, monkeypatch, capsys):
    log = tmp_path / "progress.log"
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(log))
    assert list(progress.progress_bar(range(3), desc="quiet", disable=True)) == [0, 1, 2]
    assert not log.exists() or log.read_text() == ""
    assert capsys.readouterr().err == ""
