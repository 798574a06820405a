"""Manifests: JSON lines {"audio_filepath", "duration", "text"} (the MASR/PPASR/NeMo keys)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional


@dataclass(slots=True)  # no per-instance __dict__: a 100k-line manifest is held in training and create_data
class Utterance:
    audio_filepath: str
    duration: float
    text: str


class ManifestError(ValueError):
    """A manifest line that cannot be read; the message names file and line."""


def resolve_audio_path(audio_filepath: str, data_dir: Optional[str]) -> str:
    """Relative paths resolve against data_dir when given, else the working directory."""
    if data_dir and not os.path.isabs(audio_filepath):
        return os.path.join(data_dir, audio_filepath)
    return audio_filepath


def read_manifest(path: str | Path, data_dir: Optional[str] = None,
                  min_duration: float = 0.0, max_duration: float = float("inf")) -> list[Utterance]:
    """Utterances of a manifest whose duration is within [min_duration, max_duration]."""
    utterances = []
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest {path} does not exist; run python create_data.py first") from None
    with handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                utt = Utterance(resolve_audio_path(item["audio_filepath"], data_dir),
                                float(item["duration"]), str(item["text"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ManifestError(f"{path}:{line_no}: bad manifest line ({err}); each line must be JSON "
                                    f"with audio_filepath, duration and text") from None
            if min_duration <= utt.duration <= max_duration:
                utterances.append(utt)
    return utterances


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> int:
    """Write JSON lines atomically (temporary file, then rename); returns the line count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as handle:
        for utt in utterances:
            record = {"audio_filepath": utt.audio_filepath, "duration": round(utt.duration, 4), "text": utt.text}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count
