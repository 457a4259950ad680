"""Tests of segray.models: the registry, every registered architecture, pretrained loading."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from segray.models import (
    PretrainedWeightsError,
    create_model,
    list_models,
    model_info,
    model_kwargs,
    register_model,
)
from segray.models.weights import adapt_input_weight

SMALL_DECODER = [32, 16, 16, 8]  # keeps resnet_unet cheap; default widths run in the 512 test
ALL_COMBOS = [(1, 1), (1, 3), (3, 1), (3, 3)]  # (in_channels, num_classes)
PAIRED_COMBOS = [(1, 3), (3, 1)]  # each value of both once, for the expensive variants
SIZES = [(64, 64), (67, 93)]

# model name -> [(variant id, kwargs, (in_channels, num_classes) combos)]. A registered model
# missing here is still tested, with its defaults.
VARIANTS: dict[str, list[tuple[str, dict[str, object], list[tuple[int, int]]]]] = {
    "unet": [("w8", {"base_width": 8}, ALL_COMBOS)],
    "resnet_unet": [
        ("resnet18-atrous", {"encoder": "resnet18", "decoder_channels": SMALL_DECODER}, ALL_COMBOS),
        ("resnet34-atrous", {"encoder": "resnet34", "decoder_channels": SMALL_DECODER}, ALL_COMBOS),
        ("resnet18-plain", {"encoder": "resnet18", "atrous": False}, PAIRED_COMBOS),
        ("resnet34-plain", {"encoder": "resnet34", "atrous": False}, PAIRED_COMBOS),
        ("resnet50-atrous", {"encoder": "resnet50", "decoder_channels": SMALL_DECODER}, [(1, 3)]),
        ("resnet50-plain", {"encoder": "resnet50", "atrous": False}, [(3, 1)]),
    ],
    "deeplabv3": [("default", {}, PAIRED_COMBOS)],
}


def _variants(name: str) -> list[tuple[str, dict[str, object], list[tuple[int, int]]]]:
    return VARIANTS.get(name, [("default", {}, PAIRED_COMBOS)])


def _forward_cases() -> list[object]:
    cases = []
    for name in list_models():
        for variant, kwargs, combos in _variants(name):
            for in_channels, num_classes in combos:
                for size in SIZES:
                    cases.append(
                        pytest.param(
                            name,
                            kwargs,
                            in_channels,
                            num_classes,
                            size,
                            id=f"{name}-{variant}-c{in_channels}-k{num_classes}-{size[0]}x{size[1]}",
                        )
                    )
    return cases


def _cheap_kwargs(name: str) -> dict[str, object]:
    return dict(_variants(name)[0][1])


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- registry ---------------------------------------------------------------------------


def test_list_models_is_sorted_and_complete() -> None:
    assert list_models() == ["deeplabv3", "resnet_unet", "unet"]


def test_model_kwargs_and_info() -> None:
    assert model_kwargs("unet") == {
        "in_channels": 3,
        "num_classes": 1,
        "base_width": 64,
        "pretrained": False,
        "weights_path": None,
    }
    resnet = model_kwargs("resnet_unet")
    assert (resnet["encoder"], resnet["dilation_rates"], resnet["atrous"]) == (
        "resnet50",
        [1, 6, 12, 18],
        True,
    )
    assert model_kwargs("deeplabv3") == {
        "in_channels": 3,
        "num_classes": 1,
        "pretrained": False,
        "weights_path": None,
    }
    info = model_info("resnet_unet")
    assert info["name"] == "resnet_unet"
    assert info["encoders"] == ["resnet18", "resnet34", "resnet50"]
    assert info["defaults"] == model_kwargs("resnet_unet")
    assert isinstance(info["description"], str) and info["description"]
    assert model_info("unet")["encoders"] == []
    for name in list_models():
        info = model_info(name)
        assert info["name"] == name
        # `encoders` lists exactly the values of an `encoder` kwarg, for models that have one.
        assert bool(info["encoders"]) == ("encoder" in info["defaults"])
        if info["encoders"]:
            assert info["defaults"]["encoder"] in info["encoders"]
    # Callers may mutate what they get without changing the registry.
    model_kwargs("resnet_unet")["dilation_rates"].append(99)
    assert model_kwargs("resnet_unet")["dilation_rates"] == [1, 6, 12, 18]


def test_the_catalog_says_what_the_registry_builds() -> None:
    """The torch-free catalog (config validation, `segray models`) equals the registry: the
    same models, descriptions, encoders and constructor defaults, and the parameter counts of
    the models as built."""
    from segray.models import build, catalog

    registered = build.registered()
    assert catalog.list_models() == list(registered)
    for name, entry in registered.items():
        assert catalog.model_info(name) == {"name": name, **entry}, name
        for enc in entry["encoders"] or [None]:
            kwargs = {"encoder": enc} if enc else {}
            model = build.create_model(name, in_channels=3, num_classes=1, **kwargs)
            built = sum(p.numel() for p in model.parameters())
            assert catalog.parameter_count(name, enc) == built, (name, enc)


def test_reading_the_catalog_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from segray.config import Config; from segray.models import model_info;"
        "Config.from_dict({'model': {'name': 'unet', 'base_width': 16}}); model_info('unet');"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_model_lists_valid_names() -> None:
    message = "unknown model 'foo'; valid models: deeplabv3, resnet_unet, unet"
    for call in (create_model, model_info, model_kwargs):
        with pytest.raises(ValueError) as info:
            call("foo")
        assert str(info.value) == message


def test_unknown_kwarg_lists_valid_kwargs() -> None:
    with pytest.raises(ValueError) as info:
        create_model("unet", dilation_rates=[1, 2])
    assert str(info.value) == (
        "model 'unet' got unexpected argument 'dilation_rates'; "
        "valid: base_width, in_channels, num_classes, pretrained, weights_path"
    )


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="'unet' is already registered"):
        register_model("unet", description="impostor")(nn.Identity)
    assert model_info("unet")["defaults"]["base_width"] == 64


# --- every registered model --------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs, in_channels, num_classes, size", _forward_cases())
def test_forward_backward(
    name: str,
    kwargs: dict[str, object],
    in_channels: int,
    num_classes: int,
    size: tuple[int, int],
) -> None:
    model = create_model(name, in_channels=in_channels, num_classes=num_classes, **kwargs)
    assert (model.in_channels, model.num_classes) == (in_channels, num_classes)
    x = torch.randn(2, in_channels, *size)

    out = model(x)

    assert type(out) is torch.Tensor
    assert out.shape == (2, num_classes, *size)
    assert torch.isfinite(out).all()
    out.mean().backward()
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"{param_name} got no gradient"
            assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


@pytest.mark.parametrize("name", list_models())
def test_bad_in_channels_and_num_classes_raise(name: str) -> None:
    with pytest.raises(ValueError, match="in_channels must be an int >= 1, got 0"):
        create_model(name, in_channels=0, **_cheap_kwargs(name))
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        create_model(name, num_classes=0, **_cheap_kwargs(name))


@pytest.mark.parametrize("name", list_models())
def test_bad_input_shape_raises(name: str) -> None:
    model = create_model(name, in_channels=3, **_cheap_kwargs(name)).eval()
    with pytest.raises(ValueError, match=r"expects input \(N, 3, H, W\).*got 1 channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"expects a 4-D input.*got a 3-D tensor"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"H, W >= 32.*got shape \(1, 3, 16, 64\)"):
        model(torch.randn(1, 3, 16, 64))


@pytest.mark.parametrize("name", list_models())
def test_applied_hparams_has_in_and_num_classes(name: str) -> None:
    model = create_model(name, in_channels=1, num_classes=4, **_cheap_kwargs(name))
    hparams = model.applied_hparams()
    assert hparams["in_channels"] == 1
    assert hparams["num_classes"] == 4


# --- resnet_unet -------------------------------------------------------------------------


def test_resnet50_atrous_dilations_and_512_forward() -> None:
    model = create_model("resnet_unet", encoder="resnet50").eval()
    dilations = {
        m.dilation[0]
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    }
    assert {6, 12, 18} <= dilations
    with torch.no_grad():
        out = model(torch.randn(1, 3, 512, 512))
    assert out.shape == (1, 1, 512, 512)


def test_resnet_unet_applied_hparams_reflect_non_defaults() -> None:
    model = create_model(
        "resnet_unet",
        encoder="resnet18",
        dilation_rates=[2, 3, 5],
        kernel_sizes=[3, 5, 1],
        decoder_channels=[40, 30, 20, 10],
        num_classes=2,
    )
    assert model.applied_hparams() == {
        "encoder": "resnet18",
        "dilation_rates": [2, 3, 5],
        "kernel_sizes": [3, 5, 1],
        "decoder_channels": [40, 30, 20, 10],
        "atrous": True,
        "in_channels": 3,
        "num_classes": 2,
    }
    # Every decoder stage was built with those rates, not just the first.
    convs = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d) and m.dilation[0] == 5]
    assert len(convs) == 4

    plain = create_model("resnet_unet", encoder="resnet34", atrous=False, in_channels=1)
    assert plain.applied_hparams() == {
        "encoder": "resnet34",
        "dilation_rates": None,
        "kernel_sizes": None,
        "decoder_channels": [256, 128, 64, 32],
        "atrous": False,
        "in_channels": 1,
        "num_classes": 1,
    }


def test_unet_applied_hparams() -> None:
    model = create_model("unet", base_width=4, in_channels=1, num_classes=5)
    assert model.applied_hparams() == {"base_width": 4, "in_channels": 1, "num_classes": 5}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dilation_rates": [1, 6, 12]}, "dilation_rates and kernel_sizes need the same"),
        (
            {"dilation_rates": [], "kernel_sizes": []},
            "dilation_rates and kernel_sizes need the same",
        ),
        ({"dilation_rates": [0, 6, 12, 18]}, r"dilation_rates must be integers >= 1, got \[0,"),
        ({"kernel_sizes": [1, 2, 3, 3]}, r"kernel_sizes must be odd integers >= 1, got \[1, 2"),
        ({"encoder": "resnet101"}, "encoder must be one of resnet18, resnet34, resnet50"),
        ({"decoder_channels": [64, 32, 16]}, "decoder_channels must be 4 integers >= 1"),
    ],
)
def test_resnet_unet_bad_args_raise_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        create_model("resnet_unet", **{"encoder": "resnet18", **kwargs})
    assert "\n" not in str(info.value)


def test_unet_has_no_pretrained_weights(tmp_path) -> None:
    with pytest.raises(ValueError, match="^model 'unet' has no pretrained weights$"):
        create_model("unet", pretrained=True)
    with pytest.raises(ValueError, match="^model 'unet' has no pretrained weights$"):
        create_model("unet", weights_path=str(tmp_path / "w.pth"))


def test_weights_path_requires_pretrained(tmp_path) -> None:
    with pytest.raises(ValueError, match="set pretrained=True"):
        create_model("resnet_unet", encoder="resnet18", weights_path=str(tmp_path / "w.pth"))


# --- pretrained weights -------------------------------------------------------------------


def _save(state: dict[str, torch.Tensor], path) -> str:
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_resnet_unet_loads_weights_path(tmp_path, in_channels: int) -> None:
    reference = torchvision.models.resnet18(weights=None).state_dict()
    path = _save(reference, tmp_path / "resnet18.pth")

    model = create_model(
        "resnet_unet",
        encoder="resnet18",
        in_channels=in_channels,
        pretrained=True,
        weights_path=path,
        decoder_channels=SMALL_DECODER,
    )

    expected = reference["conv1.weight"]
    if in_channels == 1:
        expected = expected.sum(dim=1, keepdim=True)
    assert torch.equal(model.encoder.conv1.weight, expected)
    assert torch.equal(model.encoder.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])
    assert torch.equal(model.encoder.bn1.running_var, reference["bn1.running_var"])


# model name -> (a pretrained file's state dict, its stem key, the stem's parameter in the
# model). A registered model missing here must refuse pretrained weights.
PRETRAINED_STEMS = {
    "resnet_unet": (
        lambda: torchvision.models.resnet18(weights=None).state_dict(),
        "conv1.weight",
        lambda model: model.encoder.conv1.weight,
    ),
    "deeplabv3": (
        lambda: torchvision.models.segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, aux_loss=True
        ).state_dict(),
        "backbone.conv1.weight",
        lambda model: model.net.backbone.conv1.weight,
    ),
}


def test_adapt_input_weight_follows_timm_rule() -> None:
    rgb = torch.randn(8, 3, 3, 3)
    assert torch.equal(adapt_input_weight(rgb, 1), rgb.sum(dim=1, keepdim=True))
    assert torch.equal(adapt_input_weight(rgb, 3), rgb)
    four = adapt_input_weight(rgb, 4)
    assert four.shape == (8, 4, 3, 3)
    torch.testing.assert_close(four[:, :3], rgb * 0.75)  # RGB kept, scaled by 3/4
    torch.testing.assert_close(four[:, 3], rgb[:, 0] * 0.75)  # the 4th band repeats R
    # With N a multiple of 3, N equal bands give the response three equal RGB bands gave.
    x = torch.randn(1, 1, 5, 5)
    for n in (1, 6):
        adapted = adapt_input_weight(rgb, n)
        torch.testing.assert_close(
            F.conv2d(x.expand(1, n, 5, 5), adapted), F.conv2d(x.expand(1, 3, 5, 5), rgb)
        )


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels", [4, 2])
def test_every_model_takes_n_bands_with_an_adapted_pretrained_stem(
    tmp_path, name: str, in_channels: int
) -> None:
    kwargs = _cheap_kwargs(name)
    model = create_model(name, in_channels=in_channels, num_classes=2, **kwargs).eval()
    assert model.applied_hparams()["in_channels"] == in_channels
    with torch.no_grad():
        assert model(torch.randn(1, in_channels, 64, 64)).shape == (1, 2, 64, 64)
    if name not in PRETRAINED_STEMS:
        with pytest.raises(ValueError, match="has no pretrained weights"):
            create_model(name, in_channels=in_channels, pretrained=True, **kwargs)
        return
    state_fn, key, stem = PRETRAINED_STEMS[name]
    state = state_fn()
    path = _save(state, tmp_path / "weights.pth")
    pretrained = create_model(
        name, in_channels=in_channels, pretrained=True, weights_path=path, **kwargs
    )
    assert torch.equal(stem(pretrained), adapt_input_weight(state[key], in_channels))


def test_deeplabv3_loads_weights_path_skipping_replaced_layers(tmp_path) -> None:
    # Same layout as the COCO checkpoint: 21 classes and an auxiliary head.
    reference = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, aux_loss=True
    ).state_dict()
    path = _save(reference, tmp_path / "deeplab.pth")

    model = create_model(
        "deeplabv3", in_channels=1, num_classes=2, pretrained=True, weights_path=path
    )

    net = model.net
    assert net.aux_classifier is None
    assert torch.equal(
        net.backbone.conv1.weight, reference["backbone.conv1.weight"].sum(dim=1, keepdim=True)
    )
    assert torch.equal(
        net.classifier[0].convs[1][0].weight, reference["classifier.0.convs.1.0.weight"]
    )
    assert net.classifier[4].weight.shape == (2, 256, 1, 1)


def test_weights_path_missing_file(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=f"^pretrained weights file not found: {missing}$"):
        create_model("resnet_unet", encoder="resnet18", pretrained=True, weights_path=str(missing))


def test_weights_path_of_another_encoder_is_rejected(tmp_path) -> None:
    path = _save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"do not fit ResNetEncoder: .*missing keys") as info:
        create_model("resnet_unet", encoder="resnet34", pretrained=True, weights_path=path)
    assert "\n" not in str(info.value)


@pytest.fixture
def offline(tmp_path, monkeypatch) -> list[str]:
    """No cached weights (TORCH_HOME is empty) and every download fails like a machine offline.

    Yields the list of URLs a download was attempted for.
    """
    attempts: list[str] = []

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        attempts.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # torchvision's WeightsEnum.get_state_dict -> torch.hub.load_state_dict_from_url, which
    # downloads with the module-level torch.hub.download_url_to_file.
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return attempts


@pytest.mark.parametrize(
    "name, kwargs, weights",
    [
        ("resnet_unet", {"encoder": "resnet18"}, "ResNet18_Weights.IMAGENET1K_V1"),
        (
            "resnet_unet",
            {"encoder": "resnet50", "decoder_channels": SMALL_DECODER},
            "ResNet50_Weights.IMAGENET1K_V2",
        ),
        ("deeplabv3", {}, "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1"),
    ],
)
def test_offline_pretrained_raises_clear_error(
    offline: list[str], name: str, kwargs: dict[str, object], weights: str
) -> None:
    with pytest.raises(PretrainedWeightsError) as info:
        create_model(name, pretrained=True, **kwargs)

    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "\n" not in message
    assert message.startswith(f"cannot download pretrained weights {weights} (https://")
    assert "no network" in message
    assert "weights_path=" in message
    assert len(offline) == 1 and offline[0] in message


def test_default_build_never_downloads(offline: list[str]) -> None:
    for name in list_models():
        create_model(name, **_cheap_kwargs(name))
    assert offline == []
