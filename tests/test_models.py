"""Model registry: shapes, exact parameter counts, external sources, local weights, errors."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torch import nn

from prunecli.config.schema import ModelConfig
from prunecli.cost import count_params as count_parameters
from prunecli.errors import CheckpointError, ConfigError, PrunecliError, UnknownNameError
from prunecli.models import MODELS, SOURCES, build_model, describe_models

PRUNECLI_MODELS = [
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "mobilenet_v1",
]  # fmt: skip
DETECTION_MODELS = ["ssd300_resnet50", "ssd512_resnet50", "ssd_tiny"]  # tests/test_det_models.py


def build(name: str, num_classes: int = 10, in_chans: int = 3, **cfg: object) -> nn.Module:
    return build_model({"name": name, **cfg}, num_classes=num_classes, in_chans=in_chans)


def test_all_families_registered() -> None:
    assert MODELS.names() == sorted(PRUNECLI_MODELS + DETECTION_MODELS)
    assert SOURCES == ("prunecli", "torchvision", "timm", "torchvision_det")


@pytest.mark.parametrize("name", PRUNECLI_MODELS)
def test_forward_shapes(name: str) -> None:
    torch.manual_seed(0)
    for in_chans in (1, 3):
        model = build(name, num_classes=7, in_chans=in_chans).eval()
        with torch.no_grad():
            for size in (32, 28):
                assert model(torch.randn(2, in_chans, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", PRUNECLI_MODELS)
def test_fx_traceable(name: str) -> None:
    model = build(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_resnet20_parameter_count() -> None:
    # By hand, 10 classes, 3 input channels (BN = 2 params per channel):
    #   stem 3*16*9 + 32                                        =     464
    #   stage 1: 3 blocks x (2*16*16*9 + 2*32)                  =  14,016
    #   stage 2: (16*32*9 + 32*32*9 + 128 + 16*32 + 64)
    #            + 2 x (2*32*32*9 + 128)                        =  51,648
    #   stage 3: (32*64*9 + 64*64*9 + 256 + 32*64 + 128)
    #            + 2 x (2*64*64*9 + 256)                        = 205,696
    #   fc 64*10 + 10                                           =     650
    # total 272,474; minus the two projection shortcuts (576 + 2,176) it is the paper's
    # option-A 269,722 ("0.27M").
    n = count_parameters(build("resnet20"))
    assert 260_000 <= n <= 280_000
    assert n == 272_474


def test_resnet56_parameter_count() -> None:
    # 464 + 9*4,672 + (14,528 + 8*18,560) + (57,728 + 8*73,984) + 650 = 855,770
    # (option A, without the shortcuts' 2,752: 853,018, the paper's "0.85M").
    assert count_parameters(build("resnet56")) == 855_770


def test_mobilenet_v1_parameter_count() -> None:
    # Paper: 4.2M at 224x224 for 1000 classes; exact: 3,206,976 in the body + 1,025,000 fc.
    n = count_parameters(build("mobilenet_v1", num_classes=1000))
    assert abs(n - 4.2e6) / 4.2e6 < 0.01
    assert n == 4_231_976


def test_mobilenet_v1_kwargs() -> None:
    model = build("mobilenet_v1", kwargs={"width_mult": 0.5, "cifar_stem": True})
    assert model.stem[0].stride == (1, 1)
    assert model.fc.in_features == 512
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg16_bn_parameter_count() -> None:
    # convs (no bias) 14,710,464 + BN 8,448 + Linear(512, 10) 5,130; VGG-19: 20,035,018, the
    # Network Slimming paper's 20.04M.
    assert count_parameters(build("vgg16_bn")) == 14_724_042
    assert count_parameters(build("vgg19_bn")) == 20_035_018


def test_model_config_dataclass_accepted() -> None:
    model = build_model(ModelConfig(name="resnet20"), num_classes=4, in_chans=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)


def test_torchvision_resnet18() -> None:
    model = build("resnet18", source="torchvision", num_classes=10, in_chans=1)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_timm_resnet18() -> None:
    model = build("resnet18", source="timm", num_classes=10, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def _fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, save: object | None) -> list[str]:
    """Point the torch hub cache at tmp_path and replace the download: no network in tests."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    calls: list[str] = []

    def download(url: str, dst: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        if save is None:
            raise URLError("[Errno -2] Name or service not known")
        torch.save(save, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return calls


def test_torchvision_pretrained_offline_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _fake_hub(monkeypatch, tmp_path, save=None)
    with pytest.raises(PrunecliError) as info:
        build("resnet18", source="torchvision", pretrained=True)
    msg = str(info.value)
    assert calls and "\n" not in msg
    assert "could not be downloaded" in msg and "model.weights=PATH" in msg


def test_torchvision_pretrained_adapts_head_and_stem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torchvision

    fake = torchvision.models.resnet18().state_dict()  # stands in for the ImageNet file
    _fake_hub(monkeypatch, tmp_path, save=fake)
    model = build("resnet18", source="torchvision", pretrained=True, num_classes=10, in_chans=1)
    torch.testing.assert_close(model.conv1.weight, fake["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.layer1[0].conv1.weight, fake["layer1.0.conv1.weight"])
    assert model.fc.out_features == 10
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_timm_pretrained_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._builder as builder

    def fail(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(builder, "load_pretrained", fail)
    with pytest.raises(PrunecliError) as info:
        build("resnet18", source="timm", pretrained=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert "could not be downloaded" in msg and "model.weights=PATH" in msg


def test_prunecli_pretrained_needs_local_file() -> None:
    with pytest.raises(ConfigError, match="model.weights=PATH"):
        build("resnet20", pretrained=True)


# --------------------------------------------------------------------------- local weights


def _same_outputs(a: nn.Module, b: nn.Module, in_chans: int = 3) -> None:
    x = torch.randn(2, in_chans, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("wrap", ["raw", "model", "state_dict", "module_prefix"])
def test_local_weights_round_trip(tmp_path: Path, wrap: str) -> None:
    torch.manual_seed(1)
    src = build("resnet20")
    sd = src.state_dict()
    payload: object = {
        "raw": sd,
        "model": {"model": sd, "epoch": 3, "config": {"name": "resnet20"}},
        "state_dict": {"state_dict": sd},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
    }[wrap]
    path = tmp_path / "w.pt"
    torch.save(payload, path)
    torch.manual_seed(2)
    dst = build("resnet20", weights=str(path))
    _same_outputs(src, dst)


def test_local_weights_torchvision(tmp_path: Path) -> None:
    src = build("resnet18", source="torchvision", in_chans=1)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = build("resnet18", source="torchvision", in_chans=1, weights=str(tmp_path / "w.pt"))
    _same_outputs(src, dst, in_chans=1)


def test_local_weights_as_pretrained_get_fresh_head(tmp_path: Path) -> None:
    src = build("resnet20", num_classes=100)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = build("resnet20", num_classes=10, in_chans=1, weights=str(tmp_path / "w.pt"),
                pretrained=True)  # fmt: skip
    torch.testing.assert_close(dst.layer3[2].conv2.weight, src.layer3[2].conv2.weight)
    torch.testing.assert_close(dst.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    assert dst.fc.out_features == 10


def test_local_weights_from_a_run_folder(tmp_path: Path) -> None:
    """``model.weights=RUN`` reads the run's last.pt, as ``ckpt=RUN`` and ``resume=RUN`` do."""
    src = build("resnet20")
    (tmp_path / "run").mkdir()
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "run" / "last.pt")
    _same_outputs(src, build("resnet20", weights=str(tmp_path / "run")))
    with pytest.raises(CheckpointError, match="folder without a run's last.pt") as info:
        build("resnet20", weights=str(tmp_path))
    assert "\n" not in str(info.value)


def test_missing_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        build("resnet20", weights=str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x00garbage\xff" * 50)
    with pytest.raises(CheckpointError, match="corrupt") as info:
        build("resnet20", weights=str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_pickled_module_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(build("resnet20"), path)
    with pytest.raises(CheckpointError, match="state_dict"):
        build("resnet20", weights=str(path))


def test_wrong_num_classes_mentions_classifier(tmp_path: Path) -> None:
    torch.save(build("resnet20", num_classes=100).state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as info:
        build("resnet20", num_classes=10, weights=str(tmp_path / "w.pt"))
    msg = str(info.value)
    assert "classifier" in msg and "100 classes" in msg and "fc.weight" in msg


def test_shape_mismatch_names_key(tmp_path: Path) -> None:
    torch.save(build("resnet20", in_chans=1).state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as info:
        build("resnet20", in_chans=3, weights=str(tmp_path / "w.pt"))
    msg = str(info.value)
    assert "conv1.weight" in msg and "(16, 1, 3, 3)" in msg and "(16, 3, 3, 3)" in msg


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    torch.save(build("resnet32").state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="unexpected key") as info:
        build("resnet20", weights=str(tmp_path / "w.pt"))
    assert "layer1.3" in str(info.value) and "more" in str(info.value)
    torch.save(build("resnet20").state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="missing key"):
        build("resnet32", weights=str(tmp_path / "w.pt"))


# --------------------------------------------------------------------------- names and arguments


@pytest.mark.parametrize(
    ("source", "name", "suggestion"),
    [("prunecli", "resnet21", "resnet20"), ("torchvision", "resnet181", "resnet18"),
     ("timm", "resnet181", "resnet18")],
)  # fmt: skip
def test_unknown_name_suggests(source: str, name: str, suggestion: str) -> None:
    with pytest.raises(UnknownNameError) as info:
        build(name, source=source)
    assert suggestion in str(info.value) and "Did you mean" in str(info.value)


def test_unknown_source() -> None:
    with pytest.raises(ConfigError, match="prunecli, torchvision, timm"):
        build("resnet20", source="keras")


def test_unknown_config_key() -> None:
    with pytest.raises(ConfigError, match="nmae"):
        build_model({"nmae": "resnet20"}, num_classes=10)


@pytest.mark.parametrize("source", SOURCES)
def test_bad_kwarg(source: str) -> None:
    name = {"prunecli": "mobilenet_v1", "torchvision_det": "ssdlite320_mobilenet_v3_large"}.get(
        source, "resnet18"
    )
    with pytest.raises(ConfigError) as info:
        build(name, source=source, kwargs={"bogus_arg": 1})
    msg = str(info.value)
    assert name in msg and "bogus_arg" in msg and "\n" not in msg


def test_num_classes_in_kwargs_rejected() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build("resnet20", kwargs={"num_classes": 5})


def test_describe_models() -> None:
    rows = describe_models()
    sources = [r[0] for r in rows]
    prunecli_rows = sorted(r[1] for r in rows if r[0] == "prunecli")
    assert prunecli_rows == sorted(PRUNECLI_MODELS + DETECTION_MODELS)
    assert all(sources.count(s) == 1 for s in ("torchvision", "timm", "torchvision_det"))
    tv = next(r for r in rows if r[0] == "torchvision")
    assert "model=torchvision model.name=NAME" in tv[2]
    assert all(len(r) == 3 and all(isinstance(x, str) and x for x in r) for r in rows)


def test_a_clashing_model_argument_names_who_sets_it() -> None:
    """``channel_multiplier`` of timm's mixnet_s is fixed by its variant, not by prunecli."""
    with pytest.raises(ConfigError, match="fixed by the model's own definition.*"
                                          "remove model.kwargs.channel_multiplier"):
        build_model({"source": "timm", "name": "mixnet_s",
                     "kwargs": {"channel_multiplier": 0.5}}, num_classes=10)
    with pytest.raises(ConfigError, match="'num_classes' is set by prunecli"):
        build_model({"source": "timm", "name": "resnet18", "kwargs": {"num_classes": 3}},
                    num_classes=10)
