"""Weight import: name / layout mapping with NumPy only, and layer outputs against torch."""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax import weights as W
from sgg_jax.models.backbone import VGG16, ResNet50

RNG = np.random.default_rng(0)


def shapes_of(model) -> dict:
    """The variables' shapes only (no compute): imports check shapes, not values."""
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.uint8)))

# torchvision vgg16 `features` as (index, out channels) for the convs; pools at 4, 9, 16, 23.
VGG_TORCH = ((0, 64), (2, 64), (5, 128), (7, 128), (10, 256), (12, 256), (14, 256), (17, 512),
             (19, 512), (21, 512), (24, 512), (26, 512), (28, 512))


def fake_vgg16(mult: float, classifier: int | None = None) -> dict:
    """A torchvision-named VGG16 state dict with random arrays (scaled widths)."""
    sd, cin = {}, 3
    for idx, c in VGG_TORCH:
        c = max(1, int(round(c * mult)))
        sd[f"features.{idx}.weight"] = RNG.normal(size=(c, cin, 3, 3)).astype(np.float32)
        sd[f"features.{idx}.bias"] = RNG.normal(size=(c,)).astype(np.float32)
        cin = c
    if classifier:
        sd["classifier.0.weight"] = RNG.normal(size=(classifier, cin * 49)).astype(np.float32)
        sd["classifier.0.bias"] = RNG.normal(size=(classifier,)).astype(np.float32)
        sd["classifier.3.weight"] = RNG.normal(size=(classifier, classifier)).astype(np.float32)
        sd["classifier.3.bias"] = RNG.normal(size=(classifier,)).astype(np.float32)
        sd["classifier.6.weight"] = RNG.normal(size=(10, classifier)).astype(np.float32)
    return sd


def fake_resnet50(mult: float, layers: int = 4, prefix: str = "") -> dict:
    """A torchvision-named ResNet-50 state dict (bottleneck widths scaled by `mult`)."""
    w = lambda c: max(1, int(round(c * mult)))
    sd = {}

    def bn(name, c):
        sd[f"{name}.weight"] = RNG.normal(size=(c,)).astype(np.float32)
        sd[f"{name}.bias"] = RNG.normal(size=(c,)).astype(np.float32)
        sd[f"{name}.running_mean"] = RNG.normal(size=(c,)).astype(np.float32)
        sd[f"{name}.running_var"] = RNG.uniform(0.5, 2.0, size=(c,)).astype(np.float32)
        sd[f"{name}.num_batches_tracked"] = np.array(7)

    def conv(name, o, i, k):
        sd[f"{name}.weight"] = RNG.normal(size=(o, i, k, k)).astype(np.float32) * 0.1

    conv(f"{prefix}conv1", w(64), 3, 7)
    bn(f"{prefix}bn1", w(64))
    cin = w(64)
    for layer, (width, blocks) in enumerate(zip((64, 128, 256, 512)[:layers], (3, 4, 6, 3))):
        for b in range(blocks):
            t = f"{prefix}layer{layer + 1}.{b}"
            c = w(width)
            conv(f"{t}.conv1", c, cin, 1); bn(f"{t}.bn1", c)
            conv(f"{t}.conv2", c, c, 3); bn(f"{t}.bn2", c)
            conv(f"{t}.conv3", 4 * c, c, 1); bn(f"{t}.bn3", 4 * c)
            if b == 0:
                conv(f"{t}.downsample.0", 4 * c, cin, 1); bn(f"{t}.downsample.1", 4 * c)
            cin = 4 * c
    return sd


def np_conv_nchw(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """Direct NCHW x OIHW cross-correlation (stride 1), the torch layout."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, o, h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + out.shape[2], j:j + out.shape[3]]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def test_vgg16_every_leaf_assigned_and_conv_matches_numpy():
    mult = 1 / 16
    model = VGG16(width_multiplier=mult)
    variables = shapes_of(model)
    sd = fake_vgg16(mult, classifier=8)
    new, rep = W.import_weights(variables, sd, W.vgg16_rules(flax_prefix=()))
    assert rep.unassigned_targets == []
    assert sorted(rep.unused_sources) == ["classifier.0.bias", "classifier.0.weight", "classifier.3.bias",
                                          "classifier.3.weight", "classifier.6.weight"]
    # conv3_1 = features.10: Flax conv with the imported kernel == NumPy conv in torch layout.
    x = RNG.normal(size=(2, sd["features.10.weight"].shape[1], 6, 5)).astype(np.float32)
    p = new["params"]["conv3_1"]
    ours = nn.Conv(p["kernel"].shape[-1], (3, 3), padding=((1, 1), (1, 1))).apply(
        {"params": p}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    ref = np_conv_nchw(x, sd["features.10.weight"], sd["features.10.bias"], 1)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), ref, rtol=1e-4, atol=1e-4)


def test_fc6_chw_flatten_matches_torch_order():
    c, out = 5, 6
    w = RNG.normal(size=(out, c * 49)).astype(np.float32)
    fmap = RNG.normal(size=(c, 7, 7)).astype(np.float32)  # torch CHW
    ref = w @ fmap.reshape(-1)
    kernel = W.fc_chw_to_hwc(w, c)
    ours = fmap.transpose(1, 2, 0).reshape(-1) @ kernel  # our NHWC flatten
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # and through the rule: Dense(in, out) takes the transposed Linear weight
    assert W.Rule(("x",), "y", "dense").apply(w).shape == (c * 49, out)
    # the inverse (export of our fc6 into a torchvision-named state dict) gives w back exactly
    np.testing.assert_array_equal(W.fc_hwc_to_chw(kernel, c), w)
    exported = W.export_state_dict({"params": {"fc6": {"kernel": kernel}}},
                                   W.dense_rules(("fc6",), "fc6", lambda v: W.fc_chw_to_hwc(v, c),
                                                 lambda k: W.fc_hwc_to_chw(k, c))[:1])
    np.testing.assert_array_equal(exported["fc6.weight"], w)


@pytest.mark.parametrize("norm_layers", [3])
def test_resnet50_c4_every_leaf_assigned(norm_layers):
    mult = 1 / 16
    model = ResNet50(width_multiplier=mult)
    variables = shapes_of(model)
    sd = fake_resnet50(mult, layers=4)
    new, rep = W.import_weights(variables, sd, W.resnet50_rules(flax_prefix=(), num_layers=3))
    assert rep.unassigned_targets == []
    assert all(k.startswith("layer4") or k.endswith("num_batches_tracked") for k in rep.unused_sources)
    np.testing.assert_array_equal(new["batch_stats"]["layer2_0"]["downsample_bn"]["var"],
                                  sd["layer2.0.downsample.1.running_var"])
    np.testing.assert_array_equal(new["params"]["layer1_1"]["conv2"]["kernel"],
                                  sd["layer1.1.conv2.weight"].transpose(2, 3, 1, 0))


def test_neural_motifs_rpn_softmax_becomes_sigmoid_logit():
    a, c = 3, 4
    w = RNG.normal(size=(6 * a, c, 1, 1)).astype(np.float32)
    b = RNG.normal(size=(6 * a,)).astype(np.float32)
    x = RNG.normal(size=(c,)).astype(np.float32)
    out6 = (w[:, :, 0, 0] @ x + b).reshape(a, 6)
    p_fg = np.exp(out6[:, 1]) / np.exp(out6[:, :2]).sum(1)
    k = W.TRANSFORMS["rpn2_cls_conv"](w)[0, 0]          # [C, A]
    logit = x @ k + W.TRANSFORMS["rpn2_cls_bias"](b)
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), p_fg, rtol=1e-5)
    kd = W.TRANSFORMS["rpn2_box_conv"](w)[0, 0]         # [C, 4A]
    deltas = (x @ kd + W.TRANSFORMS["rpn2_box_bias"](b)).reshape(a, 4)
    np.testing.assert_allclose(deltas, out6[:, 2:], rtol=1e-5, atol=1e-6)


def test_shape_mismatch_and_missing_entry_are_clear_errors():
    model = VGG16(width_multiplier=1 / 16)
    variables = shapes_of(model)
    sd = fake_vgg16(1 / 8)
    with pytest.raises(W.WeightImportError, match="features.0.weight"):
        W.import_weights(variables, sd, W.vgg16_rules(flax_prefix=()))
    del sd["features.28.bias"]
    with pytest.raises(W.WeightImportError, match="missing entry 'features.28.bias'"):
        W.import_weights(variables, sd, W.vgg16_rules(flax_prefix=())[-1:])


def test_npz_round_trip_and_pickle_refused(tmp_path):
    sd = fake_vgg16(1 / 16)
    path = str(tmp_path / "w.npz")
    W.save_npz(sd, path)
    back = W.load_state_dict(path)
    assert set(back) == set(sd)
    np.testing.assert_array_equal(back["features.0.weight"], sd["features.0.weight"])
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(W.WeightImportError, match="bad.npz"):
        W.load_state_dict(bad)
    with pytest.raises(W.WeightImportError, match="unknown checkpoint suffix"):
        open(str(tmp_path / "w.pkl"), "wb").close()
        W.load_state_dict(str(tmp_path / "w.pkl"))


# ----------------------------------------------------------------------------------------------
# against torch / torchvision (skipped when torch is not installed)


def test_vgg16_and_resnet50_outputs_match_torchvision(tmp_path):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    from sgg_jax.models.backbone import normalize_images

    torch.manual_seed(0)
    img = RNG.integers(0, 256, size=(1, 48, 48, 3), dtype=np.uint8)
    x_t = torch.from_numpy(np.asarray(normalize_images(jnp.asarray(img))).transpose(0, 3, 1, 2).copy())

    # VGG16 at 1/16 width, built with torchvision's own layer factory (same indices).
    cfg = [4, 4, "M", 8, 8, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"]
    vgg = tv.models.vgg.make_layers(cfg).eval()
    sd = {f"features.{k}": v.numpy() for k, v in vgg.state_dict().items()}
    path = str(tmp_path / "vgg.pth")
    torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()}, path)
    sd = W.load_state_dict(path)
    model = VGG16(width_multiplier=1 / 16)
    variables = shapes_of(model)  # every leaf is imported
    variables, _ = W.import_weights(variables, sd, W.vgg16_rules(flax_prefix=()))
    ours, _ = jax.jit(model.apply)(variables, jnp.asarray(img))
    with torch.no_grad():
        ref = vgg[:30](x_t).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-3, atol=1e-3)

    # ResNet-50 up to layer3, random BN statistics, eval mode.
    res = tv.models.resnet50().eval()
    with torch.no_grad():
        for m in res.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    sd = {k: v.numpy() for k, v in res.state_dict().items()}
    model = ResNet50()
    variables = shapes_of(model)  # every leaf is imported
    variables, rep = W.import_weights(variables, sd, W.resnet50_rules(flax_prefix=(), num_layers=3))
    assert rep.unassigned_targets == []
    ours, _ = jax.jit(model.apply)(variables, jnp.asarray(img))
    with torch.no_grad():
        t = res.maxpool(res.relu(res.bn1(res.conv1(x_t))))
        ref = res.layer3(res.layer2(res.layer1(t))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=2e-3, atol=2e-3)
