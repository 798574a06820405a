"""Export, ONNX Runtime and Paddle Inference runners, eval.py, infer.py and tools/tune.py on a tiny
trained model.

One tiny model (conf/tiny.yml: fbank 40, one conv, one GRU of 32) is trained for one epoch
on the spoken corpus of train_fixtures and exported once with tools/export_model.py; the
tests share it. The model is barely trained: its greedy text is gibberish but not empty,
which is all that agreement and bookkeeping tests need.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from rapidfuzz.distance import Levenshtein

from train_fixtures import ROOT, SAMPLE_RATE, spoken_corpus, tiny_config  # noqa: F401
from test_vad import pause_recording
from utils.audio import load_audio
from utils.checkpoint import CONFIG_FILE, NORMALIZER_FILE, VOCAB_FILE
from utils.features import compute_features
from utils.manifest import read_manifest, write_manifest

LOG_PROB_ATOL = 1e-4  # exported vs dynamic graph: measured max |diff| about 4e-6 on these utterances
LONG_REPEATS = 8  # the 9 s pause recording 8 times with 1 s gaps: about 80 s, above LONG_AUDIO_AUTO_S
SCRIPT_TIMEOUT_S = 180


def run_script(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """Run a repository script with this interpreter in cwd (one Paddle thread: the CPU is shared)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]


def transcripts(stdout: str) -> dict[str, str]:
    """infer.py lines 'path<TAB>text<TAB>(...)' -> {file name: text}."""
    rows = [line.split("\t") for line in stdout.splitlines() if line.count("\t") == 2]
    return {Path(path).name: text for path, text, _ in rows}


def durations(stdout: str) -> dict[str, float]:
    rows = [line.split("\t") for line in stdout.splitlines() if line.count("\t") == 2]
    return {Path(path).name: float(info[1:].split(" s audio")[0]) for path, _, info in rows}


def timestamp_blocks(stdout: str) -> dict[str, list[tuple[float, float, str]]]:
    """infer.py --timestamps: the '  begin end  token' lines under each file's line."""
    blocks, current = {}, None
    for line in stdout.splitlines():
        if line.count("\t") == 2:
            current = blocks.setdefault(Path(line.split("\t")[0]).name, [])
        elif current is not None and re.match(r"^\s+\d+\.\d+\s+\d+\.\d+\s+\S", line):
            begin, end, token = line.split(maxsplit=2)
            current.append((float(begin), float(end), token))
    return blocks


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(spoken_corpus, tmp_path_factory):  # noqa: F811
    """{'root': models/tiny, 'model': best_model, 'infer': exported folder, 'export': the export run, ...}."""
    from utils.training import train

    out = tmp_path_factory.mktemp("inference")
    cfg = tiny_config(spoken_corpus, out, train__num_epoch=1)
    train(cfg)
    root = Path(cfg.train.save_model_path) / cfg.train.use_model
    # tools/export_model.py without --use_model: the destination comes from the folder's own config
    export = run_script("tools/export_model.py", "--resume_model", root / "best_model", cwd=out)
    # eval manifest: the two test sentences and two training ones
    utterances = read_manifest(spoken_corpus / "manifest.test") + read_manifest(spoken_corpus / "manifest.train")[:2]
    write_manifest(out / "manifest.eval", utterances)
    return {"root": root, "model": root / "best_model", "infer": root / "infer", "export": export, "out": out,
            "corpus": spoken_corpus, "manifest": out / "manifest.eval", "utterances": utterances}


@pytest.fixture(scope="module")
def audio_files(trained, tmp_path_factory):
    """Real and bad inputs: mono/8 kHz/stereo versions of one utterance, text-as-wav, empty, long."""
    folder = tmp_path_factory.mktemp("audio_inputs")
    mono = load_audio(trained["corpus"] / "audio" / "test_0.wav", SAMPLE_RATE)
    bad = folder / "bad"
    bad.mkdir()
    soundfile.write(str(bad / "mono.wav"), mono, SAMPLE_RATE, subtype="PCM_16")
    soundfile.write(str(bad / "stereo.wav"), np.stack([mono, mono], axis=1), SAMPLE_RATE, subtype="PCM_16")
    soundfile.write(str(bad / "low8k.wav"), load_audio(bad / "mono.wav", 8000), 8000, subtype="PCM_16")
    (bad / "text.wav").write_text("this is not audio\n", encoding="utf-8")
    (bad / "empty.wav").write_bytes(b"")
    (bad / "notes.md").write_text("not listed: no audio suffix\n", encoding="utf-8")
    pauses, samples, _ = pause_recording(folder)
    gap = np.zeros(SAMPLE_RATE, np.float32)
    long_samples = np.concatenate([np.concatenate([samples, gap])] * LONG_REPEATS)
    soundfile.write(str(folder / "long.wav"), long_samples, SAMPLE_RATE, subtype="PCM_16")
    return {"bad": bad, "pauses": pauses, "long": folder / "long.wav", "mono_samples": mono,
            "long_seconds": len(long_samples) / SAMPLE_RATE, "pauses_seconds": len(samples) / SAMPLE_RATE}


@pytest.fixture(scope="module")
def infer_runs(trained, audio_files, tmp_path_factory):
    """infer.py on a real utterance and the pause recording, with the checkpoint and with the export."""
    cwd = tmp_path_factory.mktemp("infer_cwd")
    listing = cwd / "inputs.txt"
    listing.write_text(f"{trained['corpus'] / 'audio' / 'test_0.wav'}\n{audio_files['pauses']}\n",
                       encoding="utf-8")
    return {kind: run_script("infer.py", "--model_path", trained[kind], "--wav_path", listing,
                             "--is_long_audio", "--timestamps", cwd=cwd)
            for kind in ("model", "infer")}


# ----------------------------------------------------------------------------- export and predictor
def test_export_writes_a_self_describing_infer_folder(trained):
    export = trained["export"]
    no_traceback(export)
    assert export.returncode == 0, export.stderr[-3000:]
    assert export.stdout.strip().splitlines()[-1] == f"exported {trained['model']} to {trained['infer']}"
    assert "export_model.py: effective configuration" in export.stdout
    files = {p.name for p in trained["infer"].iterdir()}
    assert {"model.pdiparams", "model.onnx", CONFIG_FILE, VOCAB_FILE, NORMALIZER_FILE} <= files
    assert files & {"model.json", "model.pdmodel"}, files

    from utils.inference import default_model_folder, is_exported, load_config

    assert is_exported(trained["infer"]) and not is_exported(trained["model"])
    cfg = load_config(trained["infer"])
    assert (cfg.features.feature_method, cfg.features.n_mels) == ("fbank", 40)
    assert default_model_folder(cfg) == trained["infer"], "infer.py/eval.py pick the export when it exists"
    source = json.loads((trained["infer"] / "source.json").read_text(encoding="utf-8"))
    weights = trained["model"] / "model.pdparams"
    assert source == {"checkpoint": "../best_model", "size": weights.stat().st_size,
                      "mtime_ns": weights.stat().st_mtime_ns, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}


def test_a_retrained_checkpoint_makes_infer_skip_its_stale_export_with_a_warning(trained, tmp_path, capsys):
    import paddle

    from utils.inference import default_model_folder, load_config

    root = tmp_path / "models" / trained["root"].name
    shutil.copytree(trained["root"], root)  # copy2: mtimes kept, so the record still matches
    export, checkpoint, weights = root / "infer", root / "best_model", root / "best_model" / "model.pdparams"
    cfg = load_config(export)
    cfg.train.save_model_path, cfg.train.use_model = str(tmp_path / "models"), root.name
    assert default_model_folder(cfg) == export and capsys.readouterr().err == ""
    weights.write_bytes(weights.read_bytes())  # the same bytes with a new mtime (a copy without -p)
    assert default_model_folder(cfg) == export and capsys.readouterr().err == ""

    state = paddle.load(str(weights))  # retrained: the same tensors with other values
    name = next(iter(state))
    state[name] = state[name] + 0.5
    paddle.save(state, str(weights))
    fix = f"python tools/export_model.py --resume_model {checkpoint} --save_model_path {root.parent} --use_model {root.name}"
    assert default_model_folder(cfg) == checkpoint
    assert capsys.readouterr().err == (
        f"warning: {export} was exported from {checkpoint} before that checkpoint changed (retrained since); using "
        f"the checkpoint {checkpoint} instead of the stale export. To use an export again: {fix}\n")
    wav = trained["corpus"] / "audio" / "test_0.wav"
    proc = run_script("infer.py", "--save_model_path", root.parent, "--use_model", root.name, "--wav_path", wav,
                      cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 0 and f"warning: {export} was exported from {checkpoint}" in proc.stderr
    assert f"with the checkpoint {checkpoint} and ctc_greedy" in proc.stdout.splitlines()[-1]
    named = run_script("infer.py", "--model_path", export, "--wav_path", wav, cwd=tmp_path)  # asked for by name
    assert named.returncode == 0 and f"using the export as asked. For the retrained model pass --model_path " \
                                      f"{checkpoint}, or export again: {fix}" in named.stderr
    assert f"with the exported model (ONNX Runtime) {export}" in named.stdout.splitlines()[-1]

    (export / "source.json").unlink()  # an export made before exports recorded their source
    assert default_model_folder(cfg) == export
    assert capsys.readouterr().err == (
        f"note: {export} records no source checkpoint (exported by an older version), so whether it is older than "
        f"{checkpoint} cannot be checked; using it as it is. Export again to have it checked: {fix}\n")


def test_an_export_of_another_checkpoint_gives_way_to_best_model_with_a_note(trained, tmp_path, capsys):
    """eval.py and infer.py without a model decode best_model, as their help says, not an export of epoch_N."""
    from utils.inference import default_model_folder, load_config, write_export_source

    root = tmp_path / "models" / trained["root"].name
    shutil.copytree(trained["root"], root)
    export, best = root / "infer", root / "best_model"
    shutil.copytree(best, root / "epoch_7")
    write_export_source(root / "epoch_7", export, export)  # as tools/export_model.py --resume_model .../epoch_7
    cfg = load_config(export)
    cfg.train.save_model_path, cfg.train.use_model = str(tmp_path / "models"), root.name
    assert default_model_folder(cfg, flag="--model_path") == best
    fix = f"python tools/export_model.py --resume_model {best} --save_model_path {root.parent} --use_model {root.name}"
    assert capsys.readouterr().err == (f"note: {export} was exported from {root / 'epoch_7'}, not from {best}; "
                                       f"using {best}. Pass --model_path {export} to use the export, or export "
                                       f"{best}: {fix}\n")
    shutil.rmtree(root / "epoch_7")  # pruned by keep_last since
    assert default_model_folder(cfg, flag="--model_path") == best
    assert capsys.readouterr().err.startswith(f"note: {export} was exported from {root / 'epoch_7'}, not from")


def test_exported_runners_and_checkpoint_agree_on_real_utterances(trained):
    from utils.decoders import greedy_decode
    from utils.inference import CheckpointRunner, ExportedRunner, OnnxRunner, load_runner

    dynamic = CheckpointRunner(trained["model"])
    exported = {"paddle": ExportedRunner(trained["infer"]), "onnx": OnnxRunner(trained["infer"])}
    assert isinstance(load_runner(trained["infer"]), OnnxRunner)
    assert isinstance(load_runner(trained["infer"], "paddle"), ExportedRunner)
    assert isinstance(load_runner(trained["model"]), CheckpointRunner)
    feats_list = [compute_features(load_audio(u.audio_filepath), "fbank", SAMPLE_RATE, 40)
                  for u in trained["utterances"][:3]]
    feats = np.zeros((len(feats_list), max(map(len, feats_list)), 40), np.float32)  # [B, T, D], padded
    for row, one in enumerate(feats_list):
        feats[row, :len(one)] = one
    feat_lens = np.array([len(one) for one in feats_list], np.int64)
    assert len(set(feat_lens)) > 1, "the batch must hold padding"

    log_a, lens_a = dynamic(feats, feat_lens)
    np.testing.assert_array_equal(lens_a, (feat_lens - 1) // 2 + 1)  # kernel 3, stride 2, padding 1
    vocabulary = dynamic.vocabulary.tokens
    texts_a = greedy_decode(log_a, lens_a, vocabulary)
    assert all(texts_a), "the tiny model must emit something, or the comparison proves little"
    for runtime, runner in exported.items():
        log_b, lens_b = runner(feats, feat_lens)
        np.testing.assert_array_equal(lens_a, lens_b)
        for row, length in enumerate(lens_a):
            np.testing.assert_allclose(log_b[row, :length], log_a[row, :length], rtol=0, atol=LOG_PROB_ATOL,
                                       err_msg=runtime)
            np.testing.assert_allclose(np.exp(log_b[row, :length]).sum(axis=1), 1.0, atol=1e-4)
        assert runner.vocabulary.tokens == vocabulary
        assert greedy_decode(log_b, lens_b, vocabulary) == texts_a, runtime


def test_an_export_without_onnx_names_the_fix(trained, tmp_path):
    from utils.inference import ModelLoadError, load_runner

    old_export = tmp_path / "infer"
    shutil.copytree(trained["infer"], old_export)
    (old_export / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match="export again with python tools/export_model.py, or use Paddle "
                                             "Inference with --runtime=paddle"):
        load_runner(old_export)
    assert load_runner(old_export, "paddle").kind == "exported model (Paddle Inference)"
    with pytest.raises(ModelLoadError, match="unknown runtime 'tvm'; use one of onnx, paddle"):
        load_runner(old_export, "tvm")


def test_a_truncated_model_onnx_is_a_load_error_naming_the_file_and_the_fix(trained, tmp_path):
    from utils.inference import ModelLoadError, load_runner

    cut_export = tmp_path / "infer"
    shutil.copytree(trained["infer"], cut_export)
    onnx_file = cut_export / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:onnx_file.stat().st_size // 2])  # a copy cut short
    with pytest.raises(ModelLoadError, match=re.escape(f"{onnx_file} cannot be loaded (damaged or cut short: "
                                                       "InvalidProtobuf); export again with python "
                                                       "tools/export_model.py")):
        load_runner(cut_export)


def test_a_cut_short_paddle_export_is_a_load_error_naming_the_files_and_the_fix(trained, tmp_path):
    from utils.inference import ModelLoadError, load_runner

    cut_export = tmp_path / "infer"
    shutil.copytree(trained["infer"], cut_export)
    params = cut_export / "model.pdiparams"
    params.write_bytes(params.read_bytes()[:params.stat().st_size // 2])  # a copy cut short
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(params))} cannot be loaded \(damaged or cut short: "
                                             r".*\); export again with python tools/export_model.py, or use ONNX "
                                             r"Runtime with --runtime=onnx"):
        load_runner(cut_export, "paddle")


def _cut_vocabulary(folder: Path, keep: int) -> None:
    vocab = folder / "vocabulary.txt"
    vocab.write_text("".join(vocab.read_text(encoding="utf-8").splitlines(keepends=True)[:keep]), encoding="utf-8")


def test_a_vocabulary_that_does_not_fit_the_weights_is_a_load_error(trained, tmp_path):
    """Paddle's set_state_dict only warns on a shape mismatch and keeps random weights: refused here."""
    from utils.inference import ModelLoadError, load_runner

    checkpoint, export = tmp_path / "best_model", tmp_path / "infer"
    shutil.copytree(trained["model"], checkpoint)
    shutil.copytree(trained["infer"], export)
    tokens = len((checkpoint / "vocabulary.txt").read_text(encoding="utf-8").splitlines())
    for folder, weights in ((checkpoint, "model.pdparams"), (export, "model.onnx")):
        _cut_vocabulary(folder, tokens - 3)
        with pytest.raises(ModelLoadError, match=re.escape(f"{folder / weights} has an output layer of {tokens} "
                                                           f"tokens but {folder / 'vocabulary.txt'} holds "
                                                           f"{tokens - 3}: put back the vocabulary.txt")):
            load_runner(folder)
    config = checkpoint / "config.yml"
    config.write_text(config.read_text(encoding="utf-8").replace("n_mels: 40", "n_mels: 48"), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"model.pdparams does not fit the model .*config.yml describes: .*"
                                             r"\(config.yml builds .*put back the config.yml"):
        load_runner(checkpoint)


def test_infer_prints_the_same_text_for_checkpoint_and_export(infer_runs):
    for kind, proc in infer_runs.items():
        no_traceback(proc)
        assert proc.returncode == 0, (kind, proc.stderr[-3000:])
    dynamic, exported = (transcripts(infer_runs[k].stdout) for k in ("model", "infer"))
    assert set(dynamic) == {"test_0.wav", "pauses.wav"}
    assert dynamic == exported
    assert all(dynamic.values())
    assert "with the checkpoint" in infer_runs["model"].stdout.splitlines()[-1]
    assert "with the exported model (ONNX Runtime)" in infer_runs["infer"].stdout.splitlines()[-1]


def test_timestamps_increase_and_stay_within_the_duration(infer_runs, audio_files):
    stdout = infer_runs["model"].stdout
    blocks, seconds = timestamp_blocks(stdout), durations(stdout)
    assert seconds["pauses.wav"] == pytest.approx(audio_files["pauses_seconds"], abs=0.01)
    times = blocks["pauses.wav"]
    assert len(times) >= 3, "one word or more per sentence"
    for begin, end, _ in times:
        assert 0.0 <= begin < end <= seconds["pauses.wav"] + 0.005  # printed with 2 decimals
    starts = [begin for begin, _, _ in times]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(a[1] <= b[0] for a, b in zip(times, times[1:])), "words do not overlap"
    assert times[-1][0] > 6.0, "the last sentence (from 7.3 s) carries words too: the offsets of pieces count"
    assert timestamp_blocks(infer_runs["infer"].stdout) == blocks


# ----------------------------------------------------------------------------- eval.py
@pytest.fixture(scope="module")
def eval_run(trained, tmp_path_factory):
    """eval.py in a fresh folder holding only models/tiny/best_model (no dataset/, no conf/).

    The copied folder's config says train.resume_model: <gone>, as when the model came from a
    resumed training; eval.py must still evaluate the folder it found, with its fbank-40 config.
    """
    cwd = tmp_path_factory.mktemp("eval_cwd")
    folder = cwd / "models" / "tiny" / "best_model"
    shutil.copytree(trained["model"], folder)
    saved = yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    saved["train"]["resume_model"] = str(cwd / "models" / "tiny" / "epoch_99_deleted")
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(saved), encoding="utf-8")
    proc = run_script("eval.py", "--use_model", "tiny", "--test_manifest", trained["manifest"], cwd=cwd)
    return {"proc": proc, "folder": folder, "tsv": cwd / "models" / "tiny" / "eval_best_model_ctc_greedy.tsv"}


def read_tsv(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    assert header == ["audio_filepath", "reference", "hypothesis", "edits", "ref_len"]
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_eval_ends_with_cer_that_the_results_file_reproduces(eval_run, trained):
    proc = eval_run["proc"]
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not Path(eval_run["folder"].parents[2] / "dataset").exists()
    last = proc.stdout.strip().splitlines()[-1]
    match = re.match(r"^cer=(\d+\.\d+) wer=(\d+\.\d+) ", last)
    assert match, last
    assert f"utterances={len(trained['utterances'])}" in last
    rows = read_tsv(eval_run["tsv"])
    assert [r["audio_filepath"] for r in rows] == [u.audio_filepath for u in trained["utterances"]]
    assert [r["reference"] for r in rows] == [u.text for u in trained["utterances"]]
    edits, ref_len = sum(int(r["edits"]) for r in rows), sum(int(r["ref_len"]) for r in rows)
    # CER counts characters without whitespace (utils/metrics.py, the PPASR convention)
    assert ref_len == sum(len(u.text.replace(" ", "")) for u in trained["utterances"]) == 33
    for row in rows:
        ref, hyp = row["reference"].replace(" ", ""), row["hypothesis"].replace(" ", "")
        assert int(row["edits"]) == Levenshtein.distance(ref, hyp)
    assert float(match.group(1)) == pytest.approx(edits / ref_len, abs=5e-7)
    assert "mean per-utterance cer:" in proc.stdout


def test_eval_results_are_replaced_whole_or_not_at_all(tmp_path):
    """A write that fails midway (here a bad utterance; a full disk alike) leaves the earlier file and no part."""
    from types import SimpleNamespace

    from utils.evaluate import EvalResult, write_results

    path = tmp_path / "eval.tsv"
    result = EvalResult(loss=0.0, error_rate=0.5, mean_error_rate=0.5, metric="cer",
                        references=["ab", "cd"], hypotheses=["ab", "ce"])
    write_results(path, result, [SimpleNamespace(audio_filepath="a.wav"), SimpleNamespace(audio_filepath="b.wav")])
    before = path.read_text(encoding="utf-8")
    assert before.splitlines()[1:] == ["a.wav\tab\tab\t0\t2", "b.wav\tcd\tce\t1\t2"]
    with pytest.raises(AttributeError):
        write_results(path, result, [SimpleNamespace(audio_filepath="a.wav"), SimpleNamespace()])
    assert path.read_text(encoding="utf-8") == before and sorted(os.listdir(tmp_path)) == ["eval.tsv"]


def test_eval_uses_the_model_folders_config_not_the_working_folder(eval_run, trained):
    """The effective config is the folder's (fbank 40), and the hypotheses equal a direct decode of each file."""
    from utils.decoders import greedy_decode
    from utils.inference import CheckpointRunner

    proc = eval_run["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "feature_method: fbank" in proc.stdout and re.search(r"^\s+n_mels: 40\b", proc.stdout, re.M)
    assert f"model={Path('models/tiny/best_model')}" in proc.stdout.strip().splitlines()[-1]
    runner = CheckpointRunner(trained["model"])
    expected = []
    for utt in trained["utterances"]:
        feats = compute_features(load_audio(utt.audio_filepath), "fbank", SAMPLE_RATE, 40)  # [T, 40]
        log_probs, out_lens = runner(feats[None], np.array([len(feats)], np.int64))
        expected += greedy_decode(log_probs, out_lens, runner.vocabulary.tokens)
    assert [r["hypothesis"] for r in read_tsv(eval_run["tsv"])] == expected
    assert any(expected)


def test_eval_beam_search_with_missing_lm_stops_and_says_how_to_build_one(trained, tmp_path):
    missing = tmp_path / "lm" / "absent.arpa"
    proc = run_script("eval.py", "--resume_model", trained["model"], "--test_manifest", trained["manifest"],
                      "--decoder", "ctc_beam_search", "--lang_model_path", missing, cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(missing) in error and "tools/build_lm.py" in error
    assert "cer=" not in proc.stdout and "evaluate" not in proc.stderr, "no silent greedy fallback"


def test_eval_stops_at_a_missing_audio_file_naming_it(trained, tmp_path):
    """Paddle's in-process DataLoader hung on a sample's error for ever; the file is named, no traceback."""
    lines = Path(trained["manifest"]).read_text(encoding="utf-8").splitlines()
    missing = tmp_path / "gone.wav"
    lines[1] = json.dumps({**json.loads(lines[1]), "audio_filepath": str(missing)})
    manifest = tmp_path / "manifest.test"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_script("eval.py", "--resume_model", trained["model"], "--test_manifest", manifest, cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 1
    assert f"{missing}: file not found (listed in {manifest}); restore the file, or rerun create_data.py" \
        in proc.stderr.strip().splitlines()[-1]


def test_eval_unknown_decoder_is_a_clear_error(trained, tmp_path):
    proc = run_script("eval.py", "--resume_model", trained["model"], "--test_manifest", trained["manifest"],
                      "--decoder", "beam_magic", cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: command line: config key 'decode.decoder' must be one of ctc_greedy, ctc_beam_search, got "
        "'beam_magic'; fix the value in the YAML or on the command line (default: --decode.decoder='ctc_greedy')")
    assert "cer=" not in proc.stdout


def test_eval_takes_model_path_too_and_keeps_the_models_own_keys(trained, tmp_path):
    """Every script accepts every key: eval.py --model_path scored best_model instead, and --rnn_size was
    printed as the effective config while the model ran with its own."""
    epoch = trained["root"] / "epoch_1"
    proc = run_script("eval.py", "--model_path", epoch, "--test_manifest", trained["manifest"], "--rnn_size", "999",
                      cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].endswith(f"model={epoch}")
    assert f"note: model.rnn_size=999 ignored: {epoch} was trained with 32 ({epoch / 'config.yml'})" in proc.stderr
    assert "rnn_size: 999" not in proc.stdout
    export = run_script("tools/export_model.py", "--model_path", epoch, "--save_model_path", tmp_path / "models",
                        cwd=tmp_path)
    no_traceback(export)
    assert export.stdout.strip().splitlines()[-1] == (f"exported {epoch} to "
                                                      f"{tmp_path / 'models' / trained['root'].name / 'infer'}")
    both = run_script("infer.py", "--model_path", epoch, "--resume_model", trained["model"], "--wav_path",
                      trained["corpus"] / "audio" / "test_0.wav", cwd=tmp_path)
    no_traceback(both)
    assert both.returncode == 1 and both.stderr.strip().splitlines()[-1] == (
        f"error: command line: --resume_model={trained['model']} and --model_path={epoch} name different models; "
        f"give one (for infer.py: --model_path)")


# ----------------------------------------------------------------------------- infer.py inputs
def test_infer_folder_handles_bad_files_without_traceback(trained, audio_files, tmp_path):
    proc = run_script("infer.py", "--model_path", trained["model"], "--wav_path", audio_files["bad"], cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 1, "files failed, so the exit status says so"
    texts, seconds = transcripts(proc.stdout), durations(proc.stdout)
    assert set(texts) == {"low8k.wav", "mono.wav", "stereo.wav"}  # notes.md is not audio: not listed
    assert texts["stereo.wav"] == texts["mono.wav"] != "", "two equal channels mix to the mono signal"
    assert texts["low8k.wav"], "8 kHz audio is resampled and transcribed"
    mono_seconds = len(audio_files["mono_samples"]) / SAMPLE_RATE
    assert seconds["low8k.wav"] == pytest.approx(mono_seconds, abs=0.01)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    bad = audio_files["bad"]
    assert errors == [f"error: {bad / 'empty.wav'}: empty file",
                      f"error: {bad / 'text.wav'}: not readable audio (Error opening '{bad / 'text.wav'}': "
                      f"Format not recognised.)"]
    assert "2 file(s) failed" in proc.stdout.strip().splitlines()[-1]


def test_infer_list_file_with_missing_and_long_files(trained, audio_files, tmp_path):
    listing = tmp_path / "inputs.lst"
    missing = tmp_path / "missing.wav"
    listing.write_text(f"{missing}\n\n{audio_files['long']}\tan optional transcript\n"
                       f"{audio_files['bad'] / 'stereo.wav'}\n", encoding="utf-8")
    proc = run_script("infer.py", "--model_path", trained["model"], "--wav_path", listing, cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {missing}: file not found"]
    seconds = durations(proc.stdout)
    assert set(seconds) == {"long.wav", "stereo.wav"}
    assert seconds["long.wav"] == pytest.approx(audio_files["long_seconds"], abs=0.01)
    assert len(transcripts(proc.stdout)["long.wav"].split()) >= LONG_REPEATS, "pieces from every repetition"


def test_infer_missing_single_file_and_empty_folder(trained, tmp_path):
    (tmp_path / "empty_dir").mkdir()
    missing = run_script("infer.py", "--model_path", trained["infer"], "--wav_path", tmp_path / "nope.wav",
                         cwd=tmp_path)
    no_traceback(missing)
    assert missing.returncode == 1  # one line, before the model loads
    assert missing.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'nope.wav'}: file not found; "
                                                              f"--wav_path takes")
    assert "transcribed" not in missing.stdout
    empty = run_script("infer.py", "--model_path", trained["infer"], "--wav_path", tmp_path / "empty_dir",
                       cwd=tmp_path)
    no_traceback(empty)
    assert empty.returncode == 1
    assert empty.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'empty_dir'} holds no audio files")


def test_long_file_is_split_at_silences_automatically(trained, audio_files, monkeypatch):
    import utils.transcribe as transcribe_module
    from utils.evaluate import make_decode_fn
    from utils.inference import CheckpointRunner

    calls = []
    real = transcribe_module.speech_segments

    def spy(samples, sample_rate):
        calls.append(len(samples))
        return real(samples, sample_rate)

    monkeypatch.setattr(transcribe_module, "speech_segments", spy)
    runner = CheckpointRunner(trained["model"])
    decode_fn = make_decode_fn("ctc_greedy", runner.cfg.decode, runner.vocabulary.tokens)
    short = transcribe_module.transcribe(str(audio_files["pauses"]), runner, decode_fn, False, False)
    assert calls == [] and short.text and not short.error, "9 s without --is_long_audio: one piece"
    result = transcribe_module.transcribe(str(audio_files["long"]), runner, decode_fn, False, True)
    assert not result.error
    assert result.duration > transcribe_module.LONG_AUDIO_AUTO_S
    assert calls == [round(audio_files["long_seconds"] * SAMPLE_RATE)], "split without being asked"
    assert result.times and result.times[-1][2] <= result.duration
    assert result.times[-1][1] > result.duration - 10, "words come from the last repetition too"
    begins = [begin for _, begin, _ in result.times]
    assert begins == sorted(begins)


def log_prob_rows(rows: list[dict], tokens: list[str]) -> np.ndarray:
    """[T, V] log-probabilities from {token: probability} per frame; the rest share what is left."""
    matrix = np.full((len(rows), len(tokens)), 1e-3)
    for t, row in enumerate(rows):
        for token, prob in row.items():
            matrix[t, tokens.index(token)] = prob
    return np.log(matrix / matrix.sum(axis=1, keepdims=True)).astype(np.float32)


def test_ctc_align_puts_a_blank_between_repeated_tokens():
    from utils.transcribe import ctc_align

    tokens = ["<blank>", "<unk>", "a"]
    log_probs = log_prob_rows([{"a": 0.9}, {"a": 0.6, "<blank>": 0.4}, {"a": 0.7, "<blank>": 0.3},
                               {"<blank>": 0.9}], tokens)  # argmax path a a a _: one "a" only
    first, last = ctc_align(log_probs, np.array([2, 2]))  # "aa": best is a _ a _ (.9 * .4 * .7 * .9)
    assert first.tolist() == [0, 2] and last.tolist() == [0, 2]
    first, last = ctc_align(log_probs, np.array([2]))
    assert first.tolist() == [0] and last.tolist() == [2]
    with pytest.raises(ValueError, match="2 tokens need more than the 2 output frames"):
        ctc_align(log_probs[:2], np.array([2, 2]))


def test_timestamps_are_those_of_the_decoded_words_not_of_the_greedy_path(tmp_path):
    """A beam search (here a fixed decode_fn) that picks "a c" where the argmax path says "a b":
    the times list "a" and "c", at the frames the forced alignment of "a c" gives them."""
    from utils.audio import save_wav
    from utils.config import Config
    from utils.decoders import greedy_decode
    from utils.text import Vocabulary
    from utils.transcribe import transcribe

    tokens = ["<blank>", "<unk>", "<space>", "a", "b", "c"]
    log_probs = log_prob_rows([{"a": 0.8, "<blank>": 0.1}, {"a": 0.6, "<blank>": 0.3},
                               {"<blank>": 0.7, "<space>": 0.2}, {"<space>": 0.7, "<blank>": 0.2},
                               {"b": 0.5, "c": 0.4, "<blank>": 0.1}, {"b": 0.5, "c": 0.3, "<blank>": 0.2},
                               {"<blank>": 0.6, "c": 0.3}, {"<blank>": 0.9}], tokens)  # [8, 6]

    class FixedRunner:
        cfg = Config()  # time strides 2 and 1: 20 ms output frames
        vocabulary = Vocabulary(tokens)

        def __call__(self, feats, feat_lens):
            return log_probs[None], np.array([len(log_probs)])

    assert greedy_decode(log_probs[None], np.array([8]), tokens) == ["a b"]
    path = tmp_path / "one_second.wav"
    save_wav(path, np.random.default_rng(0).normal(0, 0.1, SAMPLE_RATE).astype(np.float32))
    result = transcribe(str(path), FixedRunner(), lambda lp, lens: ["a c"], False, True)
    assert result.text == "a c" and not result.error
    assert [word for word, _, _ in result.times] == result.text.split()
    assert result.times == [("a", 0.0, pytest.approx(0.04)), ("c", pytest.approx(0.08), pytest.approx(0.12))]


def test_list_inputs_folder_list_file_and_single_path(tmp_path):
    from utils.transcribe import list_inputs

    for name in ("b.wav", "a.flac", "sub/c.WAV", "readme.txt", "d.wav/e.flac"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    assert list_inputs(str(tmp_path / "in")) == [str(tmp_path / "in" / n)
                                                  for n in ("a.flac", "b.wav", "d.wav/e.flac", "sub/c.WAV")]
    listing = tmp_path / "list.txt"
    listing.write_text("# my files\nx/one.wav\ttext one\n\n  x/two.wav  \n  # x/three.wav\n", encoding="utf-8")
    assert list_inputs(str(listing)) == ["x/one.wav", "x/two.wav"]
    listing.write_bytes(b"\xef\xbb\xbfx/one.wav\r\nx/two.wav\r\n")  # Notepad's UTF-8: a BOM, CRLF
    assert list_inputs(str(listing)) == ["x/one.wav", "x/two.wav"]
    listing.write_bytes("x/one.wav\nx/二.wav\n".encode("gb18030"))
    with pytest.raises(ValueError, match=re.escape(f"{listing}:2: not UTF-8 text") + ".*re-save the list as UTF-8"):
        list_inputs(str(listing))
    listing.write_bytes("x/one.wav\n".encode("utf-16-le"))  # UTF-16 without a BOM
    with pytest.raises(ValueError, match=re.escape(f"{listing}:1: not UTF-8 text") + ".*-f UTF-16LE"):
        list_inputs(str(listing))
    listing.write_text("# nothing yet\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{listing} lists no audio files (it is empty or holds only "
                                                   "blank and # lines); write one audio path a line")):
        list_inputs(str(listing))
    assert list_inputs(str(tmp_path / "in" / "b.wav")) == [str(tmp_path / "in" / "b.wav")]
    with pytest.raises(FileNotFoundError, match="some/file.wav: file not found; --wav_path takes"):
        list_inputs("some/file.wav")
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no audio files"):
        list_inputs(str(tmp_path / "none"))


# ----------------------------------------------------------------------------- tools/tune.py
def test_tune_writes_heatmap_and_prints_best_alpha(trained, tmp_path):
    from tools.build_lm import main as build_lm

    text = tmp_path / "lm_text.txt"
    text.write_text("red cat\ngo now\nthe cat sat\ngo home now\na red bus\n", encoding="utf-8")
    assert build_lm(["--text", str(text), "--exclude", "--lm_dir", str(tmp_path / "lm"), "--name", "tiny",
                     "--no_binary"]) == 0
    heatmap = tmp_path / "heat.png"
    proc = run_script("tools/tune.py", "--resume_model", trained["model"], "--test_manifest", trained["manifest"],
                      "--lang_model_path", tmp_path / "lm" / "tiny.arpa", "--alphas", "[0,1]",
                      "--betas", "[0,2]", "--beam_size", "8", "--num_proc_bsearch", "1",
                      "--heatmap_path", heatmap, cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = re.match(r"^best alpha=(\S+) beta=(\S+) cer=(\d+\.\d+) on 4 utterances", last)
    assert match, last
    assert float(match.group(1)) in (0, 1) and float(match.group(2)) in (0, 2)
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(heatmap)).shape[0] > 100
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder", encoding="utf-8")
    proc = run_script("tools/tune.py", "--resume_model", trained["model"], "--test_manifest", trained["manifest"],
                      "--lang_model_path", tmp_path / "lm" / "tiny.arpa", "--alphas", "[0]", "--betas", "[0]",
                      "--beam_size", "8", "--num_proc_bsearch", "1", "--heatmap_path", blocked / "heat.png",
                      cwd=tmp_path)
    no_traceback(proc)  # the grid's result is printed all the same
    assert proc.returncode == 0 and re.match(rf"^best alpha=0 beta=0 cer=\S+ on 4 utterances .*; no heat map "
                                             rf"\({re.escape(str(blocked / 'heat.png'))}: ",
                                             proc.stdout.strip().splitlines()[-1])


def test_tune_on_an_empty_manifest_is_an_error(trained, tmp_path):
    empty = tmp_path / "manifest.dev"
    empty.write_text("", encoding="utf-8")
    proc = run_script("tools/tune.py", "--resume_model", trained["model"], "--test_manifest", empty,
                      "--lang_model_path", "", cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {empty} holds no utterances; pass --test_manifest=a "
                                                    f"dev manifest written by create_data.py")
    missing_lm = run_script("tools/tune.py", "--resume_model", trained["model"], "--test_manifest",
                            trained["manifest"], "--lang_model_path", tmp_path / "none.arpa", cwd=tmp_path)
    no_traceback(missing_lm)  # said before the acoustic pass over the manifest
    assert missing_lm.returncode == 1 and f"error: language model {tmp_path / 'none.arpa'} does not exist" \
        in missing_lm.stderr


def test_long_audio_without_speech_is_decoded_in_capped_pieces():
    """No speech found in a long file: it is still decoded, but never as one huge forward pass."""
    from utils.transcribe import _pieces

    silence = np.zeros(50 * SAMPLE_RATE, np.float32)
    assert _pieces(silence, SAMPLE_RATE, split=True) == [(0, 266666), (266666, 533333), (533333, 800000)]
    assert _pieces(silence, SAMPLE_RATE, split=False) == [(0, 800000)]
