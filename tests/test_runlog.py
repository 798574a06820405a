"""VisualDL curves of a resumed run: no point twice, no torn record left behind."""
from pathlib import Path

from visualdl import LogWriter

from utils.runlog import _LENGTH, RunLog, read_points, rewind_records


def _points(path: Path) -> list[tuple[str, int]]:
    return read_points(path.parent)


def _write_run(folder: Path, train_steps: range, test_epochs: range) -> Path:
    writer = LogWriter(logdir=str(folder))
    for step in train_steps:
        writer.add_scalar(tag="Train/Loss", value=1.0 / step, step=step)
    for epoch in test_epochs:
        writer.add_scalar(tag="Test/cer", value=0.5, step=epoch)
    path = Path(writer.file_name)
    writer.close()
    return path


def test_rewind_drops_points_past_the_checkpoint_and_a_torn_tail(tmp_path):
    path = _write_run(tmp_path, range(10, 110, 10), range(1, 4))
    with open(path, "ab") as handle:  # a kill in the middle of writing one more record
        handle.write(_LENGTH.pack(40) + b"\x0a\x05")
    dropped = rewind_records(path, train_step=50, finished_epochs=2)
    assert dropped == 5 + 1 + 1  # Train 60..100, Test 3, the torn record
    assert _points(path) == [("Train/Loss", s) for s in (10, 20, 30, 40, 50)] + [("Test/cer", 1), ("Test/cer", 2)]


def test_rewind_leaves_a_whole_file_untouched(tmp_path):
    path = _write_run(tmp_path, range(1, 4), range(1, 2))
    before = path.read_bytes()
    assert rewind_records(path, train_step=3, finished_epochs=1) == 0
    assert path.read_bytes() == before


def test_resumed_run_appends_to_the_same_file_without_duplicates(tmp_path):
    path = _write_run(tmp_path, range(1, 9), range(1, 3))  # the killed run got to step 8, epoch 2
    log = RunLog(None, tmp_path)
    assert log.start_curves(train_step=5, finished_epochs=1) == 3 + 1
    for step in (6, 7, 8):
        log.scalar("Train/Loss", 0.1, step)
    log.scalar("Test/cer", 0.4, 2)
    log.close()
    assert sorted(tmp_path.glob("vdlrecords.*.log")) == [path]
    points = _points(path)
    assert len(points) == len(set(points)) == 8 + 2


def test_fresh_run_starts_empty_curves(tmp_path):
    path = _write_run(tmp_path, range(1, 5), range(1, 2))
    log = RunLog(None, tmp_path)
    assert log.start_curves(0, 0) == 5
    log.close()
    assert _points(path) == []


def test_a_record_header_cut_short_is_dropped_too(tmp_path):
    path = _write_run(tmp_path, range(1, 3), range(1, 2))
    with open(path, "ab") as handle:
        handle.write(b"\x07\x00\x00")  # 3 of the 8 length bytes
    assert rewind_records(path, train_step=2, finished_epochs=1) == 1
    assert _points(path) == [("Train/Loss", 1), ("Train/Loss", 2), ("Test/cer", 1)]
