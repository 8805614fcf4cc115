"""Config: command-line values parsed without eval, plugin YAML files found, errors that say what to do."""

import sys

import pytest

from recbole_llm.config import Config, parse_value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("1e-4", 1e-4),
        ("[5,10]", [5, 10]),
        ("True", True),
        ("false", False),
        ("None", None),
        ("igd", "igd"),
        ("[q_proj,v_proj]", ["q_proj", "v_proj"]),
        ("q_proj,v_proj", ["q_proj", "v_proj"]),
        ("__import__('os').system('echo pwned')", "__import__('os').system('echo pwned')"),
    ],
)
def test_parse_value(text, expected):
    assert parse_value(text) == expected


def test_yaml_and_command_line_overrides(monkeypatch, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("learning_rate: 0.5\nepochs: 7\n")
    monkeypatch.setattr(sys, "argv", ["run", "--epochs=9", "--topk=[1,2]"])
    config = Config(model="SASRec", dataset="ml-100k", config_file_list=[str(extra)])
    assert config["learning_rate"] == 0.5  # file beats properties/overall.yaml
    assert config["epochs"] == 9  # command line beats file
    assert config["topk"] == [1, 2]
    assert config["benchmark_filename"] == ["train", "valid", "test"]  # properties/overall.yaml
    assert config["n_layers"] == 2  # properties/model/SASRec.yaml
    assert config["data_path"].endswith("ml-100k") and "dataset_example" not in config["data_path"]


def test_unknown_model_names_the_fix(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run"])
    with pytest.raises(ValueError, match="SASRec, GRU4Rec or Caser"):
        Config(model="SasRec", dataset="ml-100k")
    # Any unknown name (not only near misses of SASRec) lists the nearest known names, never a stray
    # import error of an unrelated RecBole module.
    with pytest.raises(ValueError, match=r"Unknown model 'SASRecc'\. Did you mean SASRec\b"):
        Config(model="SASRecc", dataset="ml-100k")
    with pytest.raises(ValueError, match=r"BPR is not a sequential model"):
        Config(model="BPR", dataset="ml-100k")


def test_yaml_is_loaded_safely(monkeypatch, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("x: !!python/object/apply:os.system ['echo pwned']\n")
    monkeypatch.setattr(sys, "argv", ["run"])
    with pytest.raises(Exception, match="python/object"):
        Config(model="SASRec", dataset="ml-100k", config_file_list=[str(bad)])


def test_cpu_threads_sets_torch_threads_and_rejects_bad_values():
    import pytest
    import torch

    from recbole_llm.quick_start import set_cpu_threads

    before = torch.get_num_threads()
    try:
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1
        set_cpu_threads(None)  # torch's default is left alone
        assert torch.get_num_threads() == 1
        for bad in (0, -2, "two", True):
            with pytest.raises(ValueError, match="cpu_threads"):
                set_cpu_threads(bad)
    finally:
        torch.set_num_threads(before)


def test_space_form_one_list_value_and_the_string_none_are_read_as_written(monkeypatch):
    """Issue 14: ``--objective igd`` trained SFT, ``--lora_target_modules=q_proj`` became its letters."""
    monkeypatch.setattr(
        sys, "argv", ["run", "--objective=igd", "--lora_target_modules=q_proj", "--fill=none"]
    )
    equals = Config(model="LLMGenRec", dataset="tiny")
    monkeypatch.setattr(sys, "argv", ["run", "--objective", "igd", "--lora_target_modules", "q_proj"])
    spaces = Config(model="LLMGenRec", dataset="tiny")
    assert equals["objective"] == spaces["objective"] == "igd"
    assert equals["lora_target_modules"] == spaces["lora_target_modules"] == ["q_proj"]
    assert equals["fill"] == "none"  # the option's name, not Python's None
