"""The stage-1 training config (xraysyn.train.prior_config, xraysyn.train.config_io): presets, the YAML round
trip, strict fields and types, partial files over a preset, data sources, the size checks."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from xraysyn.models import PriorNet3D
from xraysyn.train.config_io import ConfigError, from_dict, read_yaml, to_dict
from xraysyn.train.prior_config import (
    PHANTOM_SOURCE,
    PRESETS,
    DataSource,
    PriorTrainingConfig,
    config_from_mapping,
    dump_config,
    load_config,
    preset_config,
)

#: The issue's bound on the weights of the CPU preset.
CPU_WEIGHTS_MAX_BYTES = 20 * 10**6
FLOAT32_BYTES = 4


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_yaml(name, tmp_path):
    config = preset_config(name)
    assert config.preset == name
    text = dump_config(config)
    assert config_from_mapping(yaml.safe_load(text)) == config
    # through a file as a user would pass it, and every field is written (nothing left to defaults)
    path = tmp_path / "resolved.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path) == config
    written = yaml.safe_load(text)
    for section in dataclasses.fields(PriorTrainingConfig):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            assert set(written[section.name]) == {f.name for f in dataclasses.fields(value)}, section.name


def test_presets_are_what_they_say():
    paper, cpu64, small = preset_config("paper"), preset_config("cpu64"), preset_config("small")
    # the official release's optimiser, the paper's protocol
    assert paper.optim.learning_rate == 1e-4 and paper.optim.adam_betas == (0.5, 0.9)
    assert paper.data.volume_size == 128 and paper.simulation.detector_pixels == 128
    assert paper.data.max_angle_deg == 18.0
    assert paper.validation.views == 20 and paper.validation.max_azimuth_deg == 9.0
    assert paper.simulation.sdd_mm == 1200.0 and paper.simulation.sid_mm == 1000.0
    assert cpu64.data.volume_size == 64 and cpu64.simulation.detector_pixels == 64 and not cpu64.loop.bf16
    assert small.data.volume_size == 16
    assert all(source.path == PHANTOM_SOURCE for c in (paper, cpu64, small) for source in c.data.sources)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset_config("huge")


def test_cpu_preset_weights_fit_in_20_megabytes():
    config = preset_config("cpu64")
    network = PriorNet3D(config.model.network())
    count = sum(p.numel() for p in network.parameters())
    buffers = sum(b.numel() for b in network.buffers())
    print(f"cpu64 PriorNet3D: {count} parameters, {buffers} buffer values, "
          f"{count * FLOAT32_BYTES / 1e6:.2f} MB of float32 weights")
    assert (count + buffers) * FLOAT32_BYTES <= CPU_WEIGHTS_MAX_BYTES
    assert config.data.volume_size % config.model.network().size_divisor == 0


@pytest.mark.parametrize("mapping,where", [
    ({"fooo": 1}, r"PriorTrainingConfig: unknown field 'fooo'"),
    ({"data": {"volume_sizes": 64}}, r"data: unknown field 'volume_sizes'"),
    ({"optim": {"lr": 1e-3, "beta": 1}}, r"optim: unknown fields 'beta', 'lr'"),
    ({"data": {"sources": [{"path": "phantom"}, {"path": "x", "wieght": 2}]}}, r"data\.sources\[1\]: unknown field 'wieght'"),
])
def test_unknown_fields_are_refused_naming_the_path(mapping, where):
    with pytest.raises(ConfigError, match=where):
        config_from_mapping(mapping)


@pytest.mark.parametrize("mapping,message", [
    ({"data": {"volume_size": "64"}}, r"data\.volume_size: expected an integer, got '64'"),
    ({"loop": {"steps": True}}, r"loop\.steps: expected an integer, got True"),
    ({"loop": {"bf16": 1}}, r"loop\.bf16: expected true or false, got 1"),
    ({"model": {"widths": [8, 16.5]}}, r"model\.widths\[1\]: expected an integer"),
    ({"optim": {"adam_betas": [0.5]}}, r"optim\.adam_betas: expected a list of 2 values"),
    ({"optim": {"adam_betas": 0.5}}, r"optim\.adam_betas: expected a list"),
    ({"input": {"gamma_range": [0.7, 1.4, 2.0]}}, r"input\.gamma_range: expected a list of 2 values"),
    ({"optim": {"learning_rate": float("nan")}}, r"optim\.learning_rate: expected a finite number, got nan"),
    ({"optim": {"grad_clip_norm": float("inf")}}, r"optim\.grad_clip_norm"),
    ({"simulation": {"num_samples": "x"}}, r"simulation\.num_samples: expected an integer"),
    ({"data": {"sources": "phantom"}}, r"data\.sources: expected a list"),
    ({"data": 3}, r"data: expected a mapping of fields"),
    ({"preset": 3}, r"preset must be one of"),
    ({"preset": "tiny"}, r"preset must be one of"),
])
def test_ill_typed_values_are_refused_naming_the_field(mapping, message):
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(mapping)


@pytest.mark.parametrize("mapping,message", [
    ({"optim": {"schedule": "linear"}}, "optim.schedule must be one of"),
    ({"input": {"kvp_range": [130, 90]}}, "input: kvp_range must be"),
    ({"loss": {"ct": -1}}, "loss: loss weight ct"),
    ({"data": {"sources": []}}, "data.sources must name at least one"),
    ({"data": {"sources": [{"path": "a"}, {"path": "a", "weight": 2}]}}, "names a source twice"),
    ({"data": {"sources": [{"path": "a", "weight": 0}]}}, "weight of data source 'a'"),
    ({"simulation": {"sid_mm": 1300.0}}, "must be smaller than sdd_mm"),
    ({"loop": {"device": "tpu"}}, "loop.device must be one of"),
    ({"model": {"norm": "layer"}}, "model.norm must be one of"),
])
def test_values_the_sections_refuse_are_config_errors(mapping, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_from_mapping(mapping)


def test_volume_size_must_be_a_multiple_of_two_to_the_levels():
    small = preset_config("small")
    levels = len(small.model.widths)
    divisor = 2**levels
    good = config_from_mapping({"preset": "small", "data": {"volume_size": 3 * divisor}})
    assert good.data.volume_size == 3 * divisor
    with pytest.raises(ConfigError, match=rf"data\.volume_size {3 * divisor + 2} must be a multiple of {divisor}"):
        config_from_mapping({"preset": "small", "data": {"volume_size": 3 * divisor + 2}})
    # one level more: 24 = 3·8 is fine at two levels, not at three
    with pytest.raises(ConfigError, match="multiple of 8"):
        config_from_mapping({"preset": "small", "data": {"volume_size": 12}, "model": {"widths": [4, 8, 16]}})
    with pytest.raises(ConfigError, match="multiple of"):
        small.replace(data__volume_size=3 * divisor + 1)


def test_batch_must_be_divisible_by_accumulation_steps():
    assert config_from_mapping({"preset": "small", "loop": {"batch_size": 4},
                                "optim": {"accumulation_steps": 2}}).optim.accumulation_steps == 2
    with pytest.raises(ConfigError, match=r"loop\.batch_size 3 is not divisible by optim\.accumulation_steps 2"):
        config_from_mapping({"preset": "small", "loop": {"batch_size": 3}, "optim": {"accumulation_steps": 2}})


def test_a_yaml_file_with_some_fields_overrides_the_named_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: small\nloop:\n  steps: 7\n  seed: 3\ndata:\n  sources:\n    - {path: shards/, weight: 0.7}\n"
                    "    - {path: phantom, weight: 0.3}\n", encoding="utf-8")
    config = load_config(path)
    small = preset_config("small")
    assert config == small.replace(loop__steps=7, loop__seed=3,
                                   data__sources=(DataSource("shards/", 0.7), DataSource("phantom", 0.3)))
    assert config.loop.batch_size == small.loop.batch_size and config.model == small.model
    # without a preset the file overrides paper
    path.write_text("optim:\n  warmup_steps: 10\n", encoding="utf-8")
    assert load_config(path) == preset_config("paper").replace(optim__warmup_steps=10)
    # a preset name is a preset, not a file
    assert load_config("cpu64") == preset_config("cpu64")


def test_bad_config_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a preset"):
        load_config("no-such-preset")
    broken = tmp_path / "broken.yaml"
    broken.write_text("loop: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_yaml(listing)
    typo = tmp_path / "typo.yaml"
    typo.write_text("preset: small\nloop:\n  stpes: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="loop: unknown field 'stpes'"):
        load_config(typo)


def test_numbers_written_as_people_write_them_in_yaml(tmp_path):
    # PyYAML reads ``1e-4`` (no dot) as a string by default; a config file must take it as the number
    path = tmp_path / "lr.yaml"
    path.write_text("preset: small\noptim:\n  learning_rate: 1e-4\n  grad_clip_norm: 5E+1\nloop:\n  steps: 10\n",
                    encoding="utf-8")
    config = load_config(path)
    assert config.optim.learning_rate == 1e-4 and config.optim.grad_clip_norm == 50.0
    assert isinstance(config.loop.steps, int)
    assert read_yaml(path)["loop"]["steps"] == 10


@pytest.mark.parametrize("text,path,weight", [
    ("shards/:0.7", "shards/", 0.7),
    ("phantom", "phantom", 1.0),
    ("phantom:0.3", "phantom", 0.3),
    ("phantom:2", "phantom", 2.0),
    ("C:/x", "C:/x", 1.0),  # a Windows drive, not a weight
    ("C:\\data\\shards", "C:\\data\\shards", 1.0),
    ("C:/x:0.5", "C:/x", 0.5),
    ("a:b", "a:b", 1.0),  # not a number: part of the path
    ("/data/run:3/shards", "/data/run:3/shards", 1.0),
])
def test_data_source_parse(text, path, weight):
    source = DataSource.parse(text)
    assert (source.path, source.weight) == (path, weight)
    assert source.is_phantom == (path == PHANTOM_SOURCE)


@pytest.mark.parametrize("text", ["phantom:0", "phantom:-1", "shards/:nan", "shards/:inf"])
def test_data_source_parse_refuses_a_bad_weight(text):
    # a number after the colon is a weight, and a bad one is an error, not silently part of a path
    with pytest.raises(ConfigError, match="weight of data source"):
        DataSource.parse(text)


def test_data_source_checks():
    with pytest.raises(ConfigError, match="must not be empty"):
        DataSource("")
    assert DataSource("phantom").is_phantom and not DataSource("phantoms").is_phantom


def test_from_dict_and_to_dict_are_inverse_on_nested_dataclasses():
    config = preset_config("cpu64").replace(data__sources=(DataSource("a", 0.25), DataSource("phantom")),
                                            optim__grad_clip_norm=None, simulation__num_samples=None)
    plain = to_dict(config)
    assert isinstance(plain["data"]["sources"], list) and plain["data"]["sources"][0] == {"path": "a", "weight": 0.25}
    assert plain["optim"]["grad_clip_norm"] is None and isinstance(plain["model"]["widths"], list)
    assert from_dict(PriorTrainingConfig, plain) == config
    assert yaml.safe_load(dump_config(config)) == plain
    # integers are accepted where floats are expected and become floats
    assert from_dict(PriorTrainingConfig, {**plain, "optim": {**plain["optim"], "learning_rate": 1}}).optim.learning_rate == 1.0


def test_mixed_key_types_give_a_config_error_not_a_type_error():
    with pytest.raises(ConfigError, match="unknown fields"):
        config_from_mapping({"foo": 1, 2: 3})
