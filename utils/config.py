"""One typed configuration per experiment: dataclass defaults <- YAML file <- command line.

Every key can be overridden from the command line, either dotted (`--train.batch_size=16`)
or by its bare name when that name is unique across sections (`--batch_size=16`, the
MASR habit). A command-line value is read as YAML (`[8, 8]`, `1e-3`, `true`), except for
keys that hold a string: those keep the text as typed (`--wav_path "take #1.wav"`). An
unknown key, a value of the wrong type (list elements included) or out of a key's range
is an error that names the key.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml


Check = tuple[str, Callable[[Any], bool]]  # (the values allowed, in words; the test of a value)
AT_LEAST_1: Check = (">= 1", lambda v: v >= 1)
AT_LEAST_0: Check = (">= 0", lambda v: v >= 0)


def _all_at_least_1(value: list) -> bool:
    """A non-empty list whose numbers, at any depth, are >= 1, and whose inner lists are not empty."""
    return bool(value) and all(_all_at_least_1(item) if isinstance(item, list) else item >= 1 for item in value)


def _pairs_at_least_1(value: list) -> bool:
    return _all_at_least_1(value) and all(isinstance(pair, list) and len(pair) == 2 for pair in value)


EACH_AT_LEAST_1: Check = ("a non-empty list of numbers each >= 1", _all_at_least_1)
PAIRS_AT_LEAST_1: Check = ("a non-empty list of [freq, time] pairs of numbers >= 1", _pairs_at_least_1)
NONE_WORDS = ("None", "none", "null")  # command-line spellings of None


def one_of(*choices: str) -> Check:
    """A key that takes one of a few words (the modules that act on them keep the same tuples; the
    config tests compare the two)."""
    return (f"one of {', '.join(choices)}", lambda v: v in choices)


FEATURE_METHODS = ("linear", "fbank")  # utils.features.FEATURE_METHODS
RNN_TYPES = ("gru", "lstm")  # utils.model.RNN_TYPES
LOADERS = ("slots", "paddle")  # utils.data.LOADERS
OPTIMIZERS = ("adam", "adamw")  # utils.optim.build_optimizer
SCHEDULERS = ("warmup_exponential", "warmup_halflife", "constant")  # utils.optim.learning_rate_at
CPU_KERNELS = ("auto", "fused", "paddle")  # utils.cpu_kernels.CHOICES
THREAD_PLACEMENTS = ("auto", "off")  # utils.placement.CHOICES
METRICS = ("cer", "wer")  # utils.metrics.METRICS
DECODERS = ("ctc_greedy", "ctc_beam_search")  # utils.decoders.DECODER_NAMES
RUNTIMES = ("onnx", "paddle")  # utils.inference.RUNTIMES


def _key(default, help_text: str, check: Optional[Check] = None):
    """A config field with a help text (shown by --help and as a comment in --print_config) and an
    optional range check applied to every value set (YAML, command line, saved config)."""
    metadata = {"help": help_text, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: typing.cast(Any, default).copy(), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    train_manifest: str = _key("dataset/manifest.train", "training manifest (JSON lines)")
    test_manifest: str = _key("dataset/manifest.test", "test manifest, evaluated after every epoch")
    dataset_vocab: str = _key("dataset/vocabulary.txt", "vocabulary file written by create_data.py")
    mean_std_path: str = _key("dataset/mean_std.npz", "feature mean/std written by create_data.py")
    noise_manifest: str = _key("dataset/manifest.noise", "noise clips for the noise augmentor")
    augment_conf_path: Optional[str] = _key("conf/augmentation.json", "augmentation list; None disables it")
    data_dir: Optional[str] = _key(None, "relative audio paths resolve against this folder (else the working dir)")
    min_duration: float = _key(0.5, "shortest utterance kept, seconds")
    max_duration: float = _key(20.0, "longest utterance kept, seconds")
    num_workers: int = _key(2, "worker processes for features (create_data and the training loader)", AT_LEAST_0)
    loader: str = _key("slots", "training loader: slots (our workers pad batches into reused shared memory) "
                                "or paddle (paddle.io.DataLoader)", one_of(*LOADERS))


@dataclass
class FeatureConfig:
    feature_method: str = _key("linear", "linear (161-dim spectrogram, DeepSpeech2) or fbank (n_mels log-mel)",
                               one_of(*FEATURE_METHODS))
    sample_rate: int = _key(16000, "audio is resampled to this rate", AT_LEAST_1)
    n_mels: int = _key(80, "mel bands for fbank", AT_LEAST_1)


@dataclass
class ModelConfig:
    conv_channels: list[int] = _key([32, 32], "output channels of each 2-D convolution", EACH_AT_LEAST_1)
    conv_kernels: list[list[int]] = _key([[41, 11], [21, 11]], "kernel [freq, time] of each convolution",
                                         PAIRS_AT_LEAST_1)
    conv_strides: list[list[int]] = _key([[2, 2], [2, 1]], "stride [freq, time] of each convolution",
                                         PAIRS_AT_LEAST_1)
    rnn_type: str = _key("gru", "gru or lstm", one_of(*RNN_TYPES))
    num_rnn_layers: int = _key(3, "recurrent layers", AT_LEAST_1)
    rnn_size: int = _key(1024, "hidden units per direction", AT_LEAST_1)
    bidirectional: bool = _key(False, "bidirectional RNN (offline) or forward only (streaming)")


@dataclass
class TrainConfig:
    use_model: str = _key("deepspeech2", "name of the model folder under save_model_path")
    save_model_path: str = _key("models", "checkpoints go to <save_model_path>/<use_model>/")
    log_dir: str = _key("log", "VisualDL log folder")
    batch_size: int = _key(16, "utterances per batch per device", AT_LEAST_1)
    num_epoch: int = _key(30, "epochs", AT_LEAST_1)
    max_steps: int = _key(0, "stop after this many optimizer steps (0: run num_epoch epochs)", AT_LEAST_0)
    num_iters_per_epoch: int = _key(0, "batches per epoch (0: the whole manifest)", AT_LEAST_0)
    learning_rate: float = _key(5e-4, "peak learning rate", ("> 0", lambda v: v > 0))
    optimizer: str = _key("adamw", "adam or adamw", one_of(*OPTIMIZERS))
    weight_decay: float = _key(1e-6, "weight decay", AT_LEAST_0)
    scheduler: str = _key("warmup_exponential", "warmup_exponential, warmup_halflife or constant",
                          one_of(*SCHEDULERS))
    warmup_steps: int = _key(500, "linear warm-up steps", AT_LEAST_0)
    hold_steps: int = _key(0, "steps at peak learning rate after warm-up", AT_LEAST_0)
    decay_rate: float = _key(0.9999, "per-step multiplier after hold (warmup_exponential)",
                             ("in (0, 1]", lambda v: 0 < v <= 1))
    halflife_steps: int = _key(10000, "steps for the learning rate to halve (warmup_halflife)", AT_LEAST_1)
    min_learning_rate: float = _key(1e-6, "learning rate never decays below this", AT_LEAST_0)
    grad_clip: float = _key(5.0, "global gradient-norm clip (0: off)", AT_LEAST_0)
    accum_grad: int = _key(1, "batches accumulated per optimizer step", AT_LEAST_1)
    use_amp: bool = _key(False, "float16 mixed precision (GPU only)")
    cpu_kernels: str = _key("auto", "the step's convolutions, norms, recurrent layers and CTC loss on the CPU: fused "
                                    "(our C++ kernels, built with g++), paddle, or auto (fused when they build)",
                              one_of(*CPU_KERNELS))
    thread_placement: str = _key("auto", "on the CPU: auto pins OpenMP thread t to core t and runs loader workers "
                                         "at idle priority on the other cores (utils/placement.py); off: the OS",
                                  one_of(*THREAD_PLACEMENTS))
    keep_freed_memory: bool = _key(True, "glibc keeps freed tensors' memory for the next step instead of "
                                         "faulting it in again (utils/allocator.py)")
    scale_lr_by_world_size: bool = _key(False, "multiply learning_rate by the number of processes")
    log_interval: int = _key(20, "batches between log lines", AT_LEAST_1)
    save_step: int = _key(0, "also save last_model every this many batches (0: only at the end of each epoch, "
                             "which saves epoch_N and last_model)", AT_LEAST_0)
    keep_last: int = _key(3, "epoch_N folders kept: the one just saved and the highest-numbered others "
                             "(0: keep every one)", AT_LEAST_0)
    metrics_type: str = _key("cer", "cer or wer, picks best_model", one_of(*METRICS))
    eval_decoder: str = _key("ctc_greedy", "decoder for the per-epoch test evaluation: ctc_greedy, or "
                                           "ctc_beam_search with the decode keys", one_of(*DECODERS))
    max_nan_in_row: int = _key(10, "stop after this many batches in a row with a non-finite loss or gradient",
                               AT_LEAST_1)
    seed: int = _key(1000, "random seed (weights, shuffling, augmentation)")
    deterministic: bool = _key(False, "deterministic kernels and single-thread loading, for reproducible runs")
    resume_model: Optional[str] = _key(None, "train.py: resume from this model folder (default: last_model if "
                                             "present); eval.py, infer.py, tools/tune.py: the model to use, as "
                                             "infer.model_path")
    pretrained_model: Optional[str] = _key(None, "fine-tune: load matching weights from this model folder")


@dataclass
class DecodeConfig:
    decoder: str = _key("ctc_greedy", "ctc_greedy or ctc_beam_search", one_of(*DECODERS))
    lang_model_path: Optional[str] = _key("lm/demo_en.arpa", "KenLM model (ARPA, .arpa.gz or binary) for "
                                                             "beam search; None or '': beam search without LM")
    alpha: float = _key(1.0, "language model weight")
    beta: float = _key(2.0, "word insertion bonus")
    beam_size: int = _key(100, "beam width", AT_LEAST_1)
    cutoff_prob: float = _key(1.0, "keep the most probable tokens up to this cumulative probability",
                              ("in (0, 1] (1: no cutoff)", lambda v: 0 < v <= 1))
    cutoff_top_n: int = _key(40, "keep at most this many tokens per frame", AT_LEAST_1)
    num_proc_bsearch: int = _key(2, "processes for batched beam search", AT_LEAST_1)


@dataclass
class PrepConfig:
    annotation_path: str = _key("dataset/annotation", "folder of MASR lists (*.txt), or a file; .json/.jsonl manifests and .csv also read")
    manifest_prefix: str = _key("dataset/manifest", "writes <prefix>.train, <prefix>.test, <prefix>.noise")
    noise_dir: str = _key("dataset/audio/noise", "audio here becomes the noise manifest")
    count_threshold: int = _key(0, "tokens seen fewer times are left out of the vocabulary")
    num_samples: int = _key(5000, "utterances sampled for mean/std (-1: all)")
    test_every: int = _key(500, "without test.txt, every Nth line goes to the test set")
    max_test: int = _key(5000, "most test utterances taken that way")
    to_simplified: bool = _key(False, "convert traditional Chinese to simplified (needs OpenCC)")
    resampled_dir: str = _key("dataset/audio/resampled", "audio at another rate is converted into here")


@dataclass
class EvalConfig:
    result_path: Optional[str] = _key(None, "per-utterance results file (default: next to the model)")


@dataclass
class InferConfig:
    wav_path: str = _key("dataset/test.wav", "a wav file, a folder of audio, or a list file")
    model_path: Optional[str] = _key(None, "eval.py, infer.py, tools/tune.py: model folder or exported model "
                                           "(default: models/<use_model>/infer when exported from the current "
                                           "best_model, else best_model)")
    is_long_audio: bool = _key(False, "split at silences and decode piece by piece")
    timestamps: bool = _key(False, "print word (English) or character (Chinese) times")
    runtime: str = _key("onnx", "exported models (infer, eval, tune): onnx (ONNX Runtime) or paddle (Paddle Inference)",
                        one_of(*RUNTIMES))


@dataclass
class TuneConfig:
    alphas: list[float] = _key([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0], "language model weights tried by tools/tune.py")
    betas: list[float] = _key([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "word insertion bonuses tried by tools/tune.py")
    heatmap_path: Optional[str] = _key(None, "heat map PNG (default: next to the model folder)")
    num_utterances: int = _key(0, "tune on the first N utterances of the manifest (0: all)")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    prep: PrepConfig = field(default_factory=PrepConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


class ConfigError(ValueError):
    """A bad key or value in a config file or on the command line."""


def _sections(cfg: Config) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _short_names() -> dict[str, str]:
    """Bare key -> dotted key, for names that occur in exactly one section."""
    seen: dict[str, list[str]] = {}
    for name, section in _sections(Config()).items():
        for f in dataclasses.fields(section):
            seen.setdefault(f.name, []).append(f"{name}.{f.name}")
    return {k: v[0] for k, v in seen.items() if len(v) == 1}


def _type_hint(annotation: Any) -> Any:
    """The field's annotation as a type (they are strings under `from __future__ import annotations`)."""
    return annotation if not isinstance(annotation, str) else eval(annotation, vars(typing))  # noqa: S307


def _type_name(hint: Any) -> str:
    """int, str, list[int] ... (list[int] passes isinstance(hint, type) but has a get_origin)."""
    plain = isinstance(hint, type) and typing.get_origin(hint) is None
    return hint.__name__ if plain else str(hint).replace("typing.", "")


class _WrongType(Exception):
    """The value, or the list element in it, that does not match the annotation."""

    def __init__(self, bad: Any):
        super().__init__(bad)
        self.bad = bad


def _convert(value: Any, hint: Any) -> Any:
    """value checked against hint (element by element for list[...]); ints are accepted for floats."""
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise _WrongType(value)
        element_hint = typing.get_args(hint)[0]
        return [_convert(element, element_hint) for element in value]
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise _WrongType(value)
    return value


def _coerce(dotted: str, value: Any, annotation: Any, source: str) -> Any:
    """Check `value` against the field's annotation, list elements included."""
    hint = _type_hint(annotation)
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        if value is None or value == "None":
            return None
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    try:
        return _convert(value, hint)
    except _WrongType as err:
        element = "" if err.bad is value else f"; the element {err.bad!r} is {type(err.bad).__name__}"
        raise ConfigError(f"{source}: config key '{dotted}' expects {_type_name(hint)}, got {value!r} "
                          f"({type(value).__name__}{element}); fix the value in the YAML or on the command line"
                          ) from None


def _check_range(dotted: str, value: Any, check: Optional[Check], default: Any, source: str) -> None:
    if check is None or value is None:
        return
    allowed, test = check
    if not test(value):
        raise ConfigError(f"{source}: config key '{dotted}' must be {allowed}, got {value!r}; fix the value "
                          f"in the YAML or on the command line (default: --{dotted}={default!r})")


def set_key(cfg: Config, dotted: str, value: Any, source: str, from_text: bool = False,
            check_range: bool = True) -> None:
    """Set `section.key` (or a unique bare key) on cfg, checking name, type and (unless check_range is
    False) range.

    from_text: value is command-line text (or True for a bare flag), parsed for the key's type.
    """
    if "." not in dotted:
        full = _short_names().get(dotted)
        if full is None:
            raise ConfigError(f"{source}: unknown config key '{dotted}'; run with --help for the list of keys")
        dotted = full
    section_name, _, key = dotted.partition(".")
    section = _sections(cfg).get(section_name)
    fields = {f.name: f for f in dataclasses.fields(section)} if section is not None else {}
    if key not in fields:
        raise ConfigError(f"{source}: unknown config key '{dotted}'; run with --help for the list of keys")
    if from_text:
        value = _parse_value(value, fields[key].type)
    value = _coerce(dotted, value, fields[key].type, source)
    if check_range:
        _check_range(dotted, value, fields[key].metadata["check"], default=getattr(type(section)(), key),
                     source=source)
    setattr(section, key, value)


def load_yaml(cfg: Config, path: str) -> None:
    """Apply a YAML file of sections to cfg (nested `section: {key: value}` mappings)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML with --configs") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections at the top")
    for section_name, values in loaded.items():
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: section '{section_name}' must be a mapping of keys")
        for key, value in values.items():
            set_key(cfg, f"{section_name}.{key}", value, f"config file {path}")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict, source: str = "saved config", check_ranges: bool = True) -> Config:
    """A Config from nested sections. check_ranges False for the config saved with a model: its values were
    accepted when it was written, and a range a later version narrowed (train.grad_clip -1 once meant off)
    must not make the model unusable for eval, infer or export; names and types are still checked."""
    cfg = Config()
    for section_name, values in data.items():
        for key, value in values.items():
            set_key(cfg, f"{section_name}.{key}", value, source, check_range=check_ranges)
    return cfg


def to_yaml(cfg: Config) -> str:
    """The effective config as YAML, each key with its help text as a comment."""
    lines = []
    for section_name, section in _sections(cfg).items():
        lines.append(f"{section_name}:")
        for f in dataclasses.fields(section):
            value = yaml.safe_dump(getattr(section, f.name), default_flow_style=True, allow_unicode=True)
            value = value.strip().removesuffix("...").strip()
            lines.append(f"  {f.name}: {value}  # {f.metadata['help']}")
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(to_yaml(cfg), encoding="utf-8")


def _help_epilog(argv: list[str], default_config: str | None, defaults: dict | None) -> str:
    """The keys with the values a run would start from: the built-in defaults, the script's, then the
    YAML file (--configs, or the script's default file); built only when help is asked for."""
    if "-h" not in argv and "--help" not in argv:
        return ""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--configs", default=default_config)
    yaml_path = pre.parse_known_args(argv)[0].configs
    source = f"the values from {yaml_path}" if yaml_path else "the defaults"
    try:
        cfg = _build(Config(), defaults, yaml_path, [])
    except ConfigError as err:
        cfg, source = _build(Config(), defaults, None, []), f"the defaults ({err})"
    rows = []
    for section_name, section in _sections(cfg).items():
        for f in dataclasses.fields(section):
            rows.append(f"  --{section_name}.{f.name}={getattr(section, f.name)!r}  {f.metadata['help']}")
    return (f"config keys, with {source} (bare names work when unique, e.g. --batch_size=16):\n"
            + "\n".join(rows))


def parse_args(description: str, default_config: str | None, argv: list[str] | None = None,
               defaults: dict[str, Any] | None = None, aliases: dict[str, str] | None = None,
               base_config=None, settle=None) -> Config:
    """Build the effective config: defaults, `defaults` (per script), --configs YAML, then CLI keys.

    `aliases` maps a script's command-line name to a dotted key (eval.py's --resume_model).
    `base_config(cfg) -> Config | None` may supply the starting point instead of the defaults
    (eval.py and infer.py start from the config saved with the model); the YAML and the
    command line are applied on top of it again. `settle(cfg)`, when given, has the last word
    (before --print_config prints).
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=description, epilog=_help_epilog(argv, default_config, defaults),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=default_config, help="YAML config file")
    parser.add_argument("--print_config", action="store_true", help="print the effective config and exit")
    known, rest = parser.parse_known_args(argv)
    pairs = [((aliases or {}).get(k, k), v) for k, v in _cli_pairs(rest)]
    cfg = _build(Config(), defaults, known.configs, pairs)
    base = base_config(cfg) if base_config else None
    if base is not None:
        cfg = _build(base, defaults, known.configs, pairs)
    if settle is not None:
        settle(cfg)
    if known.print_config:
        print(to_yaml(cfg), end="")
        sys.exit(0)
    return cfg


def _build(cfg: Config, defaults: dict | None, yaml_path: str | None, pairs: list) -> Config:
    for dotted, value in (defaults or {}).items():
        set_key(cfg, dotted, value, "script default")
    if yaml_path:
        load_yaml(cfg, yaml_path)
    for dotted, text in pairs:
        set_key(cfg, dotted, text, "command line", from_text=True)
    return cfg


def _cli_pairs(args: list[str]) -> list[tuple[str, str | bool]]:
    """['--a=1', '--b', 'x', '--flag'] -> [('a', '1'), ('b', 'x'), ('flag', True)]; set_key parses the text."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: unexpected argument '{arg}'; keys are written --key=value")
        name, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                raw, i = args[i + 1], i + 1
            else:
                raw = True  # a bare flag
        pairs.append((name, raw))
        i += 1
    return pairs


def _parse_value(raw: str | bool, annotation: Any) -> Any:
    """Command-line text -> value: kept as typed for a key that holds a string ("take #1.wav" is not
    YAML's "take" and a comment; "a: b.wav" not a mapping), else parsed as YAML. None/none/null is
    None, except for a key that must hold a string. A bare flag (True) stays True."""
    if not isinstance(raw, str):
        return raw
    hint = _type_hint(annotation)
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if hint is str or (optional and str in typing.get_args(hint)):
        return None if optional and raw in NONE_WORDS else raw
    if raw in NONE_WORDS:
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def print_config(cfg: Config, script: str) -> None:
    print(f"----------- {script}: effective configuration -----------")
    print(to_yaml(cfg), end="")
    print("-" * 60, flush=True)
