"""The whole path on the embedded demo corpus (what `make demo` runs).

corpus -> noise clips -> create_data.py -> language model -> train.py (resumes) ->
eval.py greedy and beam search + LM -> export -> infer.py on a held-out file -> a table.
Every step is the same command a user types; each one's output streams through.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS_SIZE = {"en": (3000, 200), "zh": (3000, 200)}  # (train, test) utterances
NOISE_KINDS = ("whitenoise", "pinknoise", "brownnoise")
NOISE_SECONDS = 20


def run(step: str, args: list[str], timings: dict) -> str:
    """Run one step, streaming its output; returns the output. Stops the demo on failure."""
    print(f"\n===== {step}: {' '.join(args)}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1)
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        lines.append(line)
    if process.wait() != 0:
        sys.exit(f"demo: step '{step}' failed (exit {process.returncode}); its output is above")
    timings[step] = time.perf_counter() - start
    return "".join(lines)


def make_noise(folder: Path) -> None:
    """A few noise clips made with sox for the noise augmentor (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, kind in enumerate(NOISE_KINDS):
        path = folder / f"{kind}.wav"
        if not path.exists():
            subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "synth",
                            str(NOISE_SECONDS), kind, "vol", "0.3"], check=True)


def last_value(pattern: str, text: str) -> float:
    found = re.findall(pattern, text)
    if not found:
        sys.exit(f"demo: could not find '{pattern}' in the output above")
    return float(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lang", choices=sorted(CORPUS_SIZE), default="en")
    args = parser.parse_args()
    lang, py, timings = args.lang, sys.executable, {}
    config = f"conf/demo_{lang}.yml" if lang != "en" else "conf/demo.yml"
    data = Path("dataset") / f"demo_{lang}"
    num_train, num_test = CORPUS_SIZE[lang]
    run("corpus", [py, "tools/make_demo_corpus.py", "--lang", lang, "--num_train", str(num_train),
                   "--num_test", str(num_test), "--out_dir", str(data)], timings)
    make_noise(ROOT / data / "noise")
    prep = run("create_data", [py, "create_data.py", "--configs", config], timings)
    lm_path, test_list = ROOT / "lm" / f"demo_{lang}.arpa", ROOT / data / "annotation" / "test.txt"
    # an LM older than the test list may hold the sentences of a newer test set: build it again
    if not lm_path.exists() or lm_path.stat().st_mtime < test_list.stat().st_mtime:
        run("language model", [py, "tools/build_lm.py", "--text", str(data / f"lm_text_{lang}.txt"),
                               "--exclude", str(test_list), "--name", f"demo_{lang}"],
            timings)
    run("train", [py, "train.py", "--configs", config], timings)
    model_root = f"models/demo_{lang}"
    best = f"{model_root}/best_model"
    greedy = run("eval greedy", [py, "eval.py", "--configs", config, "--resume_model", best,
                                 "--decoder", "ctc_greedy"], timings)
    beam = run("eval beam+LM", [py, "eval.py", "--configs", config, "--resume_model", best,
                                "--decoder", "ctc_beam_search"], timings)
    run("export", [py, "tools/export_model.py", "--configs", config], timings)
    wav = sorted((ROOT / data / "audio" / f"demo_{lang}" / "test").glob("*.wav"))[0].relative_to(ROOT)
    infer = run("infer", [py, "infer.py", "--configs", config, "--model_path", f"{model_root}/infer",
                          "--wav_path", str(wav), "--decoder", "ctc_beam_search"], timings)
    summary = {
        "language": lang,
        "corpus": re.findall(r"create_data: kept .*? utterances", prep)[-1].removeprefix("create_data: "),
        "training_minutes": round(timings["train"] / 60, 1),
        "cer_greedy": last_value(r"cer=([0-9.]+)", greedy),
        "cer_beam_lm": last_value(r"cer=([0-9.]+)", beam),
        "infer_rtf": last_value(r"RTF ([0-9.]+)\)", infer),
        "demo_minutes": round(sum(timings.values()) / 60, 1),
    }
    print("\n===== demo summary")
    for key, value in summary.items():
        print(f"  {key:18s} {value}")
    print(f"  {'dashboard':18s} .venv/bin/visualdl --logdir=log --host 127.0.0.1 --port 8040  "
          f"(then open http://127.0.0.1:8040/app/scalar)")
    print("demo: " + json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    main()
