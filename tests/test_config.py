"""Config overrides: dotted and bare keys, YAML files, errors that name the key, --print_config."""
from __future__ import annotations

import re

import pytest
import yaml

from conftest import ROOT
from utils.config import Config, ConfigError, from_dict, parse_args, save_config, to_dict


def parse(*argv: str, **kwargs) -> Config:
    return parse_args("test", default_config=None, argv=list(argv), **kwargs)


def test_no_arguments_gives_the_defaults():
    assert to_dict(parse()) == to_dict(Config())


def test_dotted_and_bare_keys_with_both_value_forms():
    cfg = parse("--train.batch_size=8", "--num_workers", "4", "--count_threshold=3", "--prep.max_test", "7")
    assert (cfg.train.batch_size, cfg.data.num_workers, cfg.prep.count_threshold, cfg.prep.max_test) == (8, 4, 3, 7)
    assert parse("--batch_size=5").train.batch_size == 5
    changed = {(s, k) for s, keys in to_dict(cfg).items() for k, v in keys.items() if to_dict(Config())[s][k] != v}
    assert changed == {("train", "batch_size"), ("data", "num_workers"), ("prep", "count_threshold"),
                       ("prep", "max_test")}  # nothing else moved


def test_masr_create_data_names_map_to_their_sections():
    cfg = parse("--annotation_path=a/b", "--manifest_prefix=x/m", "--num_samples=-1", "--min_duration=1",
                "--max_duration=9.5", "--feature_method=fbank")
    assert (cfg.prep.annotation_path, cfg.prep.manifest_prefix, cfg.prep.num_samples) == ("a/b", "x/m", -1)
    assert (cfg.data.min_duration, cfg.data.max_duration, cfg.features.feature_method) == (1.0, 9.5, "fbank")
    assert isinstance(cfg.data.min_duration, float)  # an int is accepted for a float key


def test_value_parsing():
    cfg = parse("--learning_rate=1e-3", "--use_amp", "--conv_channels=[8, 8]", "--use_model=123")
    assert cfg.train.learning_rate == 0.001  # YAML reads 1e-3 as a string
    assert cfg.train.use_amp is True  # a bare flag is true
    assert cfg.model.conv_channels == [8, 8]
    assert cfg.train.use_model == "123"  # a number is accepted for a string key


@pytest.mark.parametrize("arg,section,key", [("--data_dir=None", "data", "data_dir"),
                                             ("--data.data_dir=null", "data", "data_dir"),
                                             ("--augment_conf_path=none", "data", "augment_conf_path")])
def test_none_for_optional_keys(arg, section, key):
    cfg = parse("--data_dir=corpus", "--augment_conf_path=conf/a.json", arg)
    assert getattr(getattr(cfg, section), key) is None
    assert parse("--resume_model=models/x").train.resume_model == "models/x"
    with pytest.raises(ConfigError, match="'data.num_workers' expects int, got None"):
        parse("--num_workers=None")  # None only where the key is Optional


@pytest.mark.parametrize("argv,message", [
    (["--no_such_key=1"], "command line: unknown config key 'no_such_key'"),
    (["--train.nope=1"], "unknown config key 'train.nope'"),
    (["--nosection.batch_size=1"], "unknown config key 'nosection.batch_size'"),
    (["--num_workers=abc"], "config key 'data.num_workers' expects int, got 'abc'"),
    (["--num_workers=true"], "'data.num_workers' expects int"),
    (["--bidirectional=1"], "'model.bidirectional' expects bool"),
    (["--learning_rate=fast"], "'train.learning_rate' expects float"),
    (["--conv_channels=[a]"], "command line: config key 'model.conv_channels' expects list[int], got ['a'] "
                              "(list; the element 'a' is str); fix the value in the YAML or on the command line"),
    (["--conv_channels=[8, true]"], "'model.conv_channels' expects list[int]"),
    (["--conv_kernels=[3, 3]"],
     "'model.conv_kernels' expects list[list[int]], got [3, 3] (list; the element 3 is int)"),
    (["--conv_strides=[[2, 2.5]]"],
     "'model.conv_strides' expects list[list[int]], got [[2, 2.5]] (list; the element 2.5 is float)"),
    (["--conv_strides=2"], "'model.conv_strides' expects list[list[int]], got 2 (int)"),
    (["--alphas=[0.5, x]"], "'tune.alphas' expects list[float]"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_keys_and_values_are_errors_naming_the_key(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(*argv)


def test_list_elements_of_the_right_type_pass_and_ints_become_floats():
    cfg = parse("--conv_channels=[8, 4]", "--conv_strides=[[3, 2], [1, 1]]", "--alphas=[0, 1e-3, 2.5]")
    assert (cfg.model.conv_channels, cfg.model.conv_strides) == ([8, 4], [[3, 2], [1, 1]])
    assert cfg.tune.alphas == [0.0, 0.001, 2.5] and all(type(a) is float for a in cfg.tune.alphas)


@pytest.mark.parametrize("arg,message", [
    ("--beam_size=0", "'decode.beam_size' must be >= 1, got 0; fix the value in the YAML or on the command "
                      "line (default: --decode.beam_size=100)"),
    ("--beam_size=-1", "'decode.beam_size' must be >= 1, got -1"),
    ("--cutoff_top_n=-1", "'decode.cutoff_top_n' must be >= 1, got -1"),
    ("--num_proc_bsearch=0", "'decode.num_proc_bsearch' must be >= 1, got 0"),
    ("--cutoff_prob=0", "'decode.cutoff_prob' must be in (0, 1] (1: no cutoff), got 0.0"),
    ("--cutoff_prob=1.5", "'decode.cutoff_prob' must be in (0, 1]"),
])
def test_beam_parameters_out_of_range_are_errors_naming_the_key(arg, message):
    with pytest.raises(ConfigError, match=re.escape(f"command line: config key {message}")):
        parse(arg)


def test_beam_parameters_at_their_limits_pass_and_yaml_is_checked_too(tmp_path):
    cfg = parse("--beam_size=1", "--cutoff_prob=1", "--cutoff_top_n=1", "--num_proc_bsearch=1")
    assert (cfg.decode.beam_size, cfg.decode.cutoff_prob, cfg.decode.cutoff_top_n) == (1, 1.0, 1)
    path = tmp_path / "exp.yml"
    path.write_text("decode:\n  beam_size: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"config file {path}: config key 'decode.beam_size' must be")):
        parse(f"--configs={path}")


@pytest.mark.parametrize("argv,expected", [
    (["--wav_path", "take #1.wav"], "take #1.wav"),  # YAML would read 'take' and a comment
    (["--wav_path=a: b.wav"], "a: b.wav"),  # YAML would read a mapping
    (["--wav_path=[1]"], "[1]"),
    (["--wav_path=null"], "null"),  # a key that must hold a string takes the word as a name
    (["--wav_path", "'quoted.wav'"], "'quoted.wav'"),
])
def test_string_keys_keep_the_command_line_text_as_typed(argv, expected):
    assert parse(*argv).infer.wav_path == expected


def test_optional_string_keys_keep_text_and_take_none():
    assert parse("--data_dir=my corpus #2").data.data_dir == "my corpus #2"
    assert parse("--data_dir=null").data.data_dir is None


def test_a_bare_flag_is_no_string():
    with pytest.raises(ConfigError, match="'infer.wav_path' expects str, got True"):
        parse("--wav_path")


def test_a_string_key_still_refuses_a_yaml_list(tmp_path):
    path = tmp_path / "exp.yml"
    path.write_text("data:\n  data_dir: [1]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape("'data.data_dir' expects str, got [1]")):
        parse(f"--configs={path}")


@pytest.mark.parametrize("value,expected", [("", ""), ("null", None), ("None", None)])
def test_lang_model_path_can_be_emptied_and_still_prints(value, expected, capsys):
    assert parse("--lang_model_path", value).decode.lang_model_path == expected
    with pytest.raises(SystemExit):
        parse("--lang_model_path", value, "--print_config")
    assert yaml.safe_load(capsys.readouterr().out)["decode"]["lang_model_path"] == expected


def test_yaml_file_then_command_line(tmp_path):
    path = tmp_path / "exp.yml"
    path.write_text("train:\n  batch_size: 4  # comment\n  learning_rate: 2e-4\ndata:\n  data_dir: null\n"
                    "prep:\n  count_threshold: 2\n", encoding="utf-8")
    cfg = parse("--configs", str(path), "--count_threshold=5")
    assert (cfg.train.batch_size, cfg.train.learning_rate) == (4, 0.0002)
    assert cfg.data.data_dir is None and cfg.prep.count_threshold == 5  # the command line wins


@pytest.mark.parametrize("text,message", [
    ("train:\n  bogus: 1\n", "exp.yml: unknown config key 'train.bogus'"),
    ("bogus:\n  batch_size: 1\n", "unknown config key 'bogus.batch_size'"),
    ("train:\n  batch_size: many\n", "'train.batch_size' expects int"),
    ("train: 3\n", "section 'train' must be a mapping"),
    ("- a\n", "expected a mapping of sections"),
    ("train: [\n", "not valid YAML"),
])
def test_bad_yaml_files(tmp_path, text, message):
    path = tmp_path / "exp.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        parse(f"--configs={path}")


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse(f"--configs={tmp_path / 'none.yml'}")


def test_print_config_prints_yaml_and_exits(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("--num_workers=3", "--print_config")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "  num_workers: 3  # worker processes" in printed
    expected = to_dict(Config())
    expected["data"]["num_workers"] = 3
    assert yaml.safe_load(printed) == expected


def test_saved_config_reads_back(tmp_path):
    cfg = parse("--data_dir=corpus", "--conv_kernels=[[5, 3]]", "--seed=7")
    save_config(cfg, tmp_path / "config.yml")
    assert to_dict(parse(f"--configs={tmp_path / 'config.yml'}")) == to_dict(cfg)
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


def test_a_model_folders_saved_config_is_read_without_todays_ranges(tmp_path):
    """grad_clip -1 meant 'off' before ranges were checked: the model must still load for eval and infer."""
    from utils.checkpoint import load_config

    saved = to_dict(Config())
    saved["train"]["grad_clip"] = -1.0
    (tmp_path / "config.yml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    assert load_config(tmp_path).train.grad_clip == -1.0
    with pytest.raises(ConfigError, match="'train.grad_clip' must be >= 0, got -1.0"):
        from_dict(saved)
    saved["train"]["grad_clip"] = "high"  # a wrong type is still refused
    (tmp_path / "config.yml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    with pytest.raises(ConfigError, match="'train.grad_clip' expects float"):
        load_config(tmp_path)


def test_script_defaults_and_aliases():
    cfg = parse("--resume_model=models/best", defaults={"data.num_workers": 0},
                aliases={"resume_model": "eval.result_path"})
    assert cfg.data.num_workers == 0 and cfg.eval.result_path == "models/best"
    assert cfg.train.resume_model is None


def test_help_lists_the_values_of_the_yaml_a_run_starts_from(tmp_path, capsys):
    """--help listed the built-in defaults (rnn_size 256) where train.py runs with conf/deepspeech2.yml's."""
    yml = tmp_path / "big.yml"
    yml.write_text("model:\n  rnn_size: 1024\n")
    with pytest.raises(SystemExit):
        parse_args("train", default_config=str(yml), argv=["--help"])
    shown = capsys.readouterr().out
    assert f"config keys, with the values from {yml}" in shown and "--model.rnn_size=1024 " in shown
    with pytest.raises(SystemExit):
        parse_args("train", default_config=str(yml), argv=["--configs", str(tmp_path / "none.yml"), "-h"])
    shown = capsys.readouterr().out
    assert "with the defaults (config file" in shown and "does not exist" in shown
    assert f"--model.rnn_size={Config().model.rnn_size} " in shown


@pytest.mark.parametrize("arg,message", [
    ("--metrics_type=CER", "'train.metrics_type' must be one of cer, wer, got 'CER'"),
    ("--eval_decoder=ctc_beam", "'train.eval_decoder' must be one of ctc_greedy, ctc_beam_search, got 'ctc_beam'"),
    ("--scheduler=cosine", "'train.scheduler' must be one of warmup_exponential, warmup_halflife, constant, "
                           "got 'cosine'"),
    ("--optimizer=sgd", "'train.optimizer' must be one of adam, adamw, got 'sgd'"),
    ("--halflife_steps=0", "'train.halflife_steps' must be >= 1, got 0"),
    ("--log_interval=0", "'train.log_interval' must be >= 1, got 0"),
    ("--accum_grad=0", "'train.accum_grad' must be >= 1, got 0"),
    ("--batch_size=0", "'train.batch_size' must be >= 1, got 0"),
    ("--keep_last=-1", "'train.keep_last' must be >= 0, got -1"),
    ("--learning_rate=0", "'train.learning_rate' must be > 0, got 0.0"),
    ("--decay_rate=1.5", "'train.decay_rate' must be in (0, 1], got 1.5"),
    ("--rnn_type=rnn", "'model.rnn_type' must be one of gru, lstm, got 'rnn'"),
    ("--conv_strides=[[0,1]]", "'model.conv_strides' must be a non-empty list of [freq, time] pairs of numbers "
                               ">= 1, got [[0, 1]]"),
    ("--conv_kernels=[[0,3]]", "'model.conv_kernels' must be a non-empty list of [freq, time] pairs of numbers "
                               ">= 1, got [[0, 3]]"),
    ("--conv_kernels=[[]]", "'model.conv_kernels' must be a non-empty list of [freq, time] pairs of numbers "
                            ">= 1, got [[]]"),
    ("--conv_kernels=[[41,11],[3]]", "'model.conv_kernels' must be a non-empty list of [freq, time] pairs of "
                                     "numbers >= 1, got [[41, 11], [3]]"),
    ("--conv_channels=[]", "'model.conv_channels' must be a non-empty list of numbers each >= 1, got []"),
    ("--decoder=beam_search", "'decode.decoder' must be one of ctc_greedy, ctc_beam_search, got 'beam_search'"),
    ("--loader=torch", "'data.loader' must be one of slots, paddle, got 'torch'"),
    ("--feature_method=mfcc", "'features.feature_method' must be one of linear, fbank, got 'mfcc'"),
    ("--cpu_kernels=cuda", "'train.cpu_kernels' must be one of auto, fused, paddle, got 'cuda'"),
    ("--thread_placement=pinned", "'train.thread_placement' must be one of auto, off, got 'pinned'"),
    ("--runtime=tvm", "'infer.runtime' must be one of onnx, paddle, got 'tvm'"),
])
def test_training_keys_out_of_range_fail_at_load_naming_key_and_values(arg, message):
    """Checked when the config is built, not after an epoch of training (or mid-run, as a division by zero)."""
    with pytest.raises(ConfigError, match=re.escape(f"command line: config key {message}; fix the value")):
        parse(arg)


def test_the_choices_are_the_ones_the_modules_act_on():
    from utils import config, cpu_kernels, data, decoders, features, inference, metrics, model, placement

    assert config.FEATURE_METHODS == features.FEATURE_METHODS and config.LOADERS == data.LOADERS
    assert config.CPU_KERNELS == cpu_kernels.CHOICES and config.THREAD_PLACEMENTS == placement.CHOICES
    assert config.METRICS == metrics.METRICS and config.DECODERS == decoders.DECODER_NAMES
    assert config.RUNTIMES == inference.RUNTIMES and config.RNN_TYPES == model.RNN_TYPES


@pytest.mark.parametrize("name", ["deepspeech2.yml", "demo.yml", "demo_zh.yml", "tiny.yml"])
def test_the_shipped_configs_pass_every_check(name):
    parse(f"--configs={ROOT / 'conf' / name}")  # raises ConfigError on a value out of its range
