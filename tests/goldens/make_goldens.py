#!/usr/bin/env python3
"""Generate the PyTorch golden outputs that resnetc's Rust tests compare against.

Run from the repository root (requires torch, torchvision, numpy; Python >= 3.11):

    /path/to/venv/bin/python tests/goldens/make_goldens.py

What it does:

* Re-implements the seeded weight/input generator of `runtime/src/seeded.rs` (a contract:
  both sides must produce bit-identical float32 values) with vectorized NumPy uint64
  arithmetic.
* For every entry of `tests/goldens/manifest.toml`, builds the model (a torchvision
  constructor for the torchvision presets, otherwise our own generic ResNet that follows
  the spec-file semantics of DESIGN.md section 3), fills every state_dict tensor from the
  generator under `weight_seed`, runs the seeded input (`"input"`, `input_seed`) in float32
  eval mode and writes the logits `[N, num_classes]` as a little-endian float32 `.npy`.
* Writes `tests/goldens/generator_check.json`, a few generator outputs for the Rust side
  to compare its own generator against.
* Checks, before anything else, that the generic builder reproduces the state_dict keys
  and shapes of every torchvision preset constructor.

CI never runs this script; the committed `.npy` / `.json` files are what the tests use.
Exit status is non-zero if a golden has a row whose top-2 logits are too close for the
argmax to be a stable test (then pick another `input_seed` for it in the manifest).
"""

import argparse
import json
import math
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1, conv3x3

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO / "tests" / "goldens"
MANIFEST = GOLDEN_DIR / "manifest.toml"

# A row whose top-2 logits differ by less than this, relative to max(1, max|logits|),
# would make the "same argmax" test fragile (the allowed error is 1e-4 of that scale).
MIN_REL_TOP2_GAP = 1e-3

# --------------------------------------------------------------------------------------
# Seeded generator (contract: runtime/src/seeded.rs)
# --------------------------------------------------------------------------------------

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64-bit hash (scalar; names are short)."""
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return h


def stream_key(name: str, seed: int) -> int:
    """key(name, seed) = fnv1a64(utf8(name)) XOR (seed * GAMMA), modulo 2^64."""
    return fnv1a64(name.encode("utf-8")) ^ ((seed * GAMMA) & MASK64)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on a uint64 array (multiplications wrap modulo 2^64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def seeded_values(name: str, seed: int, lo: float, hi: float, count: int) -> np.ndarray:
    """`count` float32 values of tensor `name` under `seed`, in [lo, hi), row-major order.

    u_i = (mix(key + (i+1) * GAMMA) >> 40) / 2^24, value_i = f32(lo + (hi - lo) * u_i)
    where the last two steps are done in float64 and then rounded to nearest float32.
    """
    key = np.uint64(stream_key(name, seed))
    i1 = np.arange(1, count + 1, dtype=np.uint64)  # i + 1
    with np.errstate(over="ignore"):  # uint64 wrap-around is intended
        z = _mix(key + i1 * np.uint64(GAMMA))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)  # exact in [0, 1)
    return (lo + (hi - lo) * u).astype(np.float32)


# Role -> range [lo, hi), exactly as Role::range in seeded.rs (bounds computed in f64).
def role_range(role: str, fan_in: int | None = None) -> tuple[float, float]:
    if role == "conv_weight":
        b = math.sqrt(6.0 / fan_in)
        return (-b, b)
    if role == "bn_weight":
        return (0.25, 0.75)
    if role in ("bn_bias", "bn_mean"):
        return (-0.1, 0.1)
    if role == "bn_var":
        return (0.5, 1.5)
    if role in ("fc_weight", "fc_bias"):
        b = 1.0 / math.sqrt(fan_in)
        return (-b, b)
    if role == "input":
        return (-1.0, 1.0)
    raise ValueError(f"unknown role {role}")


def tensor_roles(model: nn.Module) -> dict[str, tuple[str, int | None]]:
    """Map every parameter/buffer name of `model` (except num_batches_tracked) to its
    generator role and fan_in, from the type of the module that owns it."""
    roles: dict[str, tuple[str, int | None]] = {}
    for mname, m in model.named_modules():
        p = f"{mname}." if mname else ""
        if isinstance(m, nn.Conv2d):
            assert m.bias is None, f"{mname}: resnets have no conv bias"
            kh, kw = m.kernel_size
            roles[p + "weight"] = ("conv_weight", m.in_channels // m.groups * kh * kw)
        elif isinstance(m, nn.BatchNorm2d):
            roles[p + "weight"] = ("bn_weight", None)
            roles[p + "bias"] = ("bn_bias", None)
            roles[p + "running_mean"] = ("bn_mean", None)
            roles[p + "running_var"] = ("bn_var", None)
        elif isinstance(m, nn.Linear):
            roles[p + "weight"] = ("fc_weight", m.in_features)
            roles[p + "bias"] = ("fc_bias", m.in_features)
    return roles


def fill_seeded(model: nn.Module, seed: int) -> None:
    """Overwrite every state_dict tensor (but num_batches_tracked) with seeded values."""
    roles = tensor_roles(model)
    sd = model.state_dict()
    new_sd = {}
    for name, t in sd.items():
        if name.endswith("num_batches_tracked"):
            new_sd[name] = t
            continue
        role, fan_in = roles[name]  # KeyError here = a tensor we don't know how to fill
        lo, hi = role_range(role, fan_in)
        vals = seeded_values(name, seed, lo, hi, t.numel())
        new_sd[name] = torch.from_numpy(vals.reshape(tuple(t.shape)))
    model.load_state_dict(new_sd, strict=True)


def seeded_input(shape: list[int], seed: int) -> np.ndarray:
    lo, hi = role_range("input")
    return seeded_values("input", seed, lo, hi, math.prod(shape)).reshape(shape)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------

SPEC_KEYS = {"block", "layers", "widths", "stem", "stem_width", "stem_pool", "groups",
             "width_per_group", "stride_in", "num_classes", "input"}


class SpecResNet(nn.Module):
    """A generic ResNet built from a spec dict (DESIGN.md section 3).

    Mirrors torchvision.models.resnet.ResNet (and reuses its blocks), with: any number of
    stages (layer1..layerK), per-stage widths, a stem width, the input channel count from
    `input`, the "cifar" stem (3x3/1 pad 1 conv + BN + ReLU, no pool), the "caffe" stem
    pool (3x3/2, no padding, ceil mode) and stride_in = "1x1" (the strided bottleneck
    strides in its first 1x1 conv instead of the 3x3). State-dict names are torchvision's.
    """

    def __init__(self, spec: dict):
        super().__init__()
        cfg = normalize_spec(spec)
        self.cfg = cfg
        block = BasicBlock if cfg["block"] == "basic" else Bottleneck
        in_ch = cfg["input"][0]
        sw = cfg["stem_width"]

        if cfg["stem"] == "imagenet":
            self.conv1 = nn.Conv2d(in_ch, sw, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_ch, sw, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(sw)
        self.relu = nn.ReLU(inplace=True)
        if cfg["stem"] == "cifar":
            self.maxpool = nn.Identity()
        elif cfg["stem_pool"] == "caffe":
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        else:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.inplanes = sw
        self.num_stages = len(cfg["layers"])
        for s, (n, planes) in enumerate(zip(cfg["layers"], cfg["widths"])):
            stride = 1 if s == 0 else 2
            setattr(self, f"layer{s + 1}", self._make_layer(block, planes, n, stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, cfg["num_classes"])

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        cfg = self.cfg
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = []
        for j in range(blocks):
            s = stride if j == 0 else 1
            ds = downsample if j == 0 else None
            if block is BasicBlock:
                b = BasicBlock(self.inplanes, planes, s, ds)
            else:
                b = Bottleneck(self.inplanes, planes, s, ds,
                               groups=cfg["groups"], base_width=cfg["width_per_group"])
                if s != 1 and cfg["stride_in"] == "1x1":
                    # ResNet v1: stride in the first 1x1 conv, the 3x3 keeps stride 1.
                    # Same parameter shapes; Bottleneck.forward is unchanged.
                    width = b.conv1.out_channels
                    b.conv1 = conv1x1(self.inplanes, width, s)
                    b.conv2 = conv3x3(width, width, 1, cfg["groups"])
            layers.append(b)
            self.inplanes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def normalize_spec(spec: dict) -> dict:
    """Validate a spec dict and fill in the defaults (DESIGN.md section 3)."""
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(f"unknown spec keys: {sorted(unknown)}")
    cfg = dict(spec)
    if cfg.get("block") not in ("basic", "bottleneck"):
        raise ValueError(f"block must be 'basic' or 'bottleneck', got {cfg.get('block')!r}")
    layers = cfg.get("layers")
    if not layers or not all(isinstance(n, int) and n >= 1 for n in layers):
        raise ValueError(f"layers must be a non-empty list of positive ints, got {layers!r}")
    if "widths" not in cfg:
        if len(layers) > 4:
            raise ValueError("more than 4 stages need explicit widths")
        cfg["widths"] = [64, 128, 256, 512][: len(layers)]
    if len(cfg["widths"]) != len(layers):
        raise ValueError("widths and layers must have the same length")
    cfg.setdefault("stem", "imagenet")
    if cfg["stem"] not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {cfg['stem']!r}")
    cfg.setdefault("stem_width", 64 if cfg["stem"] == "imagenet" else cfg["widths"][0])
    cfg.setdefault("stem_pool", "torchvision")
    if cfg["stem_pool"] not in ("torchvision", "caffe"):
        raise ValueError(f"stem_pool must be 'torchvision' or 'caffe', got {cfg['stem_pool']!r}")
    cfg.setdefault("groups", 1)
    cfg.setdefault("width_per_group", 64)
    cfg.setdefault("stride_in", "3x3")
    if cfg["stride_in"] not in ("3x3", "1x1"):
        raise ValueError(f"stride_in must be '3x3' or '1x1', got {cfg['stride_in']!r}")
    if cfg["block"] == "basic" and (cfg["groups"] != 1 or cfg["width_per_group"] != 64):
        raise ValueError("basic blocks only support groups = 1 and width_per_group = 64")
    cfg.setdefault("num_classes", 1000)
    cfg.setdefault("input", [3, 224, 224])  # not specified as optional; same as presets
    if len(cfg["input"]) != 3:
        raise ValueError("input must be [C, H, W]")
    return cfg


def _imagenet(block, layers, **kw) -> dict:
    return {"block": block, "layers": layers, "stem": "imagenet", "num_classes": 1000,
            "input": [3, 224, 224], **kw}


def _cifar(n: int) -> dict:
    return {"block": "basic", "layers": [n, n, n], "widths": [16, 32, 64], "stem": "cifar",
            "num_classes": 10, "input": [3, 32, 32]}


# Preset name -> (torchvision constructor or None, equivalent spec dict).
PRESETS: dict[str, tuple] = {
    "resnet18": (torchvision.models.resnet18, _imagenet("basic", [2, 2, 2, 2])),
    "resnet34": (torchvision.models.resnet34, _imagenet("basic", [3, 4, 6, 3])),
    "resnet50": (torchvision.models.resnet50, _imagenet("bottleneck", [3, 4, 6, 3])),
    "resnet101": (torchvision.models.resnet101, _imagenet("bottleneck", [3, 4, 23, 3])),
    "resnet152": (torchvision.models.resnet152, _imagenet("bottleneck", [3, 8, 36, 3])),
    "wide_resnet50_2": (torchvision.models.wide_resnet50_2,
                        _imagenet("bottleneck", [3, 4, 6, 3], width_per_group=128)),
    "wide_resnet101_2": (torchvision.models.wide_resnet101_2,
                         _imagenet("bottleneck", [3, 4, 23, 3], width_per_group=128)),
    "resnext50_32x4d": (torchvision.models.resnext50_32x4d,
                        _imagenet("bottleneck", [3, 4, 6, 3], groups=32, width_per_group=4)),
    "resnext101_32x8d": (torchvision.models.resnext101_32x8d,
                         _imagenet("bottleneck", [3, 4, 23, 3], groups=32, width_per_group=8)),
    "resnext101_64x4d": (torchvision.models.resnext101_64x4d,
                         _imagenet("bottleneck", [3, 4, 23, 3], groups=64, width_per_group=4)),
    # CIFAR ResNets (He et al. 2015, sec. 4.2) with torchvision-style 1x1-conv shortcuts.
    "resnet20": (None, _cifar(3)),
    "resnet32": (None, _cifar(5)),
    "resnet44": (None, _cifar(7)),
    "resnet56": (None, _cifar(9)),
    "resnet110": (None, _cifar(18)),
}


def check_presets_match_torchvision() -> None:
    """Our generic builder must give exactly torchvision's state_dict names and shapes."""
    for name, (ctor, spec) in PRESETS.items():
        if ctor is None:
            continue
        with torch.device("meta"):  # shapes only, no allocation or init
            ref = ctor(weights=None).state_dict()
            ours = SpecResNet(spec).state_dict()
        assert list(ref) == list(ours), f"{name}: state_dict keys differ"
        for k in ref:
            assert ref[k].shape == ours[k].shape, f"{name}: {k} {ref[k].shape} vs {ours[k].shape}"
    print(f"generic builder matches torchvision for "
          f"{sum(c is not None for c, _ in PRESETS.values())} presets")


def build_model(model: str) -> tuple[nn.Module, dict]:
    """A preset name or a spec path relative to the repo root -> (model, normalized spec)."""
    if model in PRESETS:
        ctor, spec = PRESETS[model]
        m = ctor(weights=None) if ctor is not None else SpecResNet(spec)
        return m, normalize_spec(spec)
    with open(REPO / model, "rb") as f:
        spec = tomllib.load(f)
    return SpecResNet(spec), normalize_spec(spec)


# --------------------------------------------------------------------------------------
# Goldens
# --------------------------------------------------------------------------------------


def make_golden(entry: dict) -> bool:
    """Produce one golden; returns False if some row's argmax is not stable enough."""
    t0 = time.perf_counter()
    model, cfg = build_model(entry["model"])
    fill_seeded(model, entry["weight_seed"])
    model.eval()
    t_gen = time.perf_counter()

    shape = [entry["batch"], *cfg["input"]]
    x = torch.from_numpy(seeded_input(shape, entry["input_seed"]))
    with torch.no_grad():
        y = model(x).numpy()
    t_fwd = time.perf_counter()
    assert y.dtype == np.float32 and y.shape == (entry["batch"], cfg["num_classes"])
    np.save(GOLDEN_DIR / f"{entry['name']}.npy", y.astype("<f4"))

    # Informative: how far PyTorch float32 itself is from a float64 evaluation, in the
    # units of the test tolerance max|y - y_ref| / max(1, max|y_ref|) <= 1e-4.
    with torch.no_grad():
        y64 = model.double()(x.double()).numpy()
    scale = max(1.0, float(np.abs(y64).max()))
    f32_err = float(np.abs(y - y64).max()) / scale

    maxabs = float(np.abs(y).max())
    ok = True
    rows = []
    for r in range(y.shape[0]):
        top2 = np.sort(y[r])[-2:] if y.shape[1] >= 2 else np.array([-np.inf, y[r, 0]])
        gap = float(top2[1] - top2[0]) / max(1.0, maxabs)
        if gap < MIN_REL_TOP2_GAP:
            ok = False
        rows.append(f"{int(np.argmax(y[r]))} (gap {gap:.2e})")
    print(f"{entry['name']:>22}: out {list(y.shape)} max|y| {maxabs:.4g}  "
          f"argmax/rel-top2-gap: {', '.join(rows)}  f32-vs-f64 {f32_err:.1e}  "
          f"build+fill {t_gen - t0:.2f}s forward {t_fwd - t_gen:.2f}s"
          + ("" if ok else "   <-- UNSTABLE ARGMAX: choose another input_seed"))
    return ok


def write_generator_check() -> None:
    """A few generator outputs, for runtime/src/seeded.rs's tests to compare against."""
    items = [
        # (tensor name, seed, role, fan_in, shape)
        ("conv1.weight", 0, "conv_weight", 147, [64, 3, 7, 7]),          # resnet18
        ("layer1.0.bn1.running_var", 0, "bn_var", None, [64]),           # resnet18
        ("fc.bias", 0, "fc_bias", 512, [1000]),                          # resnet18
        ("input", 1, "input", None, [1, 3, 4, 4]),
    ]
    out = []
    for name, seed, role, fan_in, shape in items:
        lo, hi = role_range(role, fan_in)
        v = seeded_values(name, seed, lo, hi, math.prod(shape))
        out.append({
            "name": name, "seed": seed, "role": role, "fan_in": fan_in, "shape": shape,
            "lo": lo, "hi": hi, "count": int(v.size),
            # float(np.float32) is the exact f32 value as f64; its repr round-trips.
            "first8": [float(a) for a in v[:8]],
            # Correctly rounded float64 sum of the f32 values (math.fsum); a sequential
            # f64 sum differs in the last bits, so compare with a small relative tolerance.
            "sum": math.fsum(float(a) for a in v),
        })
    path = GOLDEN_DIR / "generator_check.json"
    path.write_text(json.dumps({"tensors": out}, indent=2) + "\n")
    for e in out:
        print(f"  {e['name']} (seed {e['seed']}, {e['role']}): count {e['count']} "
              f"sum {e['sum']!r} first8 {e['first8']}")


def self_test_generator() -> None:
    """Cheap checks of the generator against seeded.rs's own unit tests."""
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    a = seeded_values("conv1.weight", 0, 0.5, 1.5, 1000)
    b = seeded_values("conv1.weight", 1, 0.5, 1.5, 1000)
    assert ((a >= 0.5) & (a <= 1.5)).all() and not np.array_equal(a, b)
    assert abs(a.astype(np.float64).mean() - 1.0) < 0.05


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="only these golden names")
    args = ap.parse_args()

    torch.set_num_threads(2)
    self_test_generator()
    check_presets_match_torchvision()
    print("generator check:")
    write_generator_check()

    with open(MANIFEST, "rb") as f:
        entries = tomllib.load(f)["golden"]
    names = [e["name"] for e in entries]
    assert len(set(names)) == len(names), "duplicate golden names"
    all_ok = True
    for e in entries:
        if args.only and e["name"] not in args.only:
            continue
        all_ok &= make_golden(e)
    if not all_ok:
        print("some goldens have an unstable argmax; change their input_seed", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
