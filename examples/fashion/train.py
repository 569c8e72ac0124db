#!/usr/bin/env python3
"""Train and export the bundled Fashion-MNIST ResNet-20 (see model.toml).

The network is built here from scratch, but with exactly the structure and the
state_dict names of torchvision.models.resnet.ResNet, so the exported
safetensors file loads into resnetc (and into torchvision) unchanged:

    conv1.weight, bn1.*                            cifar stem: 3x3/1 conv + BN + ReLU
    layer{1,2,3}.{j}.conv{1,2}.weight              BasicBlock convolutions
    layer{i}.{j}.bn{1,2}.*                         BasicBlock batch norms
    layer{i}.{j}.downsample.{0,1}.*                1x1 strided conv + BN shortcut
    fc.weight, fc.bias                             classifier after global avg pool

Preprocessing is deliberately minimal: pixel / 255.0, one channel, no mean/std
normalisation, because that is exactly what the inference side does.

Usage (from the repository root):

    nice -n 19 /work/pyenv/bin/python examples/fashion/train.py

Training is resumable: after each epoch a checkpoint (model, optimiser,
schedule and RNG states) is written to --checkpoint; rerunning the same command
continues from there. Once all epochs are done the script exports:

    model.safetensors      float32 weights, torchvision names
    test_logits.npy        [10000, 10] float32 eval-mode logits, test-file order
    test_predictions.txt   argmax class per test image, one per line
    classes.txt            the ten class names in index order
    images/                first two test images of every class as PNG,
                           plus images/labels.txt (file, label, PyTorch prediction)
"""

import argparse
import gzip
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = "/usr/share/datasets/fashion-mnist"

CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


# ----------------------------------------------------------------------------
# Data: the IDX format, read directly with gzip + numpy.
# ----------------------------------------------------------------------------

def read_idx(path):
    """Read a gzipped IDX file into a numpy array.

    IDX header: two zero bytes, a type code (0x08 = unsigned byte), the number
    of dimensions, then one big-endian uint32 per dimension; the data follows.
    """
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims} bytes of data, got {data.size}")
    return data.reshape(dims)


def load_split(prefix):
    """Return (images uint8 [N, 28, 28], labels int64 [N]) for 'train' or 't10k'."""
    images = read_idx(os.path.join(DATA_DIR, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(DATA_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
    assert images.shape[0] == labels.shape[0]
    return images, labels.astype(np.int64)


def to_input(images_u8):
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1]: pixel / 255, nothing else."""
    return torch.from_numpy(images_u8.astype(np.float32) / 255.0).unsqueeze(1)


def augment(padded, idx, gen):
    """Random 28x28 crop out of the zero-padded 32x32 images plus a random
    horizontal flip, done for a whole batch at once with index arithmetic.

    padded: float32 [N, 1, 32, 32] (the training set padded by 2 on each side)
    idx:    int64 [B] indices of the batch's images
    """
    b = idx.shape[0]
    # Top-left corner of each crop: 0..4 in both directions (padding 2 each side).
    oy = torch.randint(0, 5, (b,), generator=gen)
    ox = torch.randint(0, 5, (b,), generator=gen)
    ar = torch.arange(28)
    rows = (oy[:, None] + ar)[:, :, None]          # [B, 28, 1]
    cols = (ox[:, None] + ar)[:, None, :]          # [B, 1, 28]
    crop = padded[idx[:, None, None], 0, rows, cols].unsqueeze(1)  # [B, 1, 28, 28]
    flip = torch.rand(b, generator=gen) < 0.5
    crop = torch.where(flip[:, None, None, None], crop.flip(3), crop)
    return crop.contiguous()


# ----------------------------------------------------------------------------
# Model: torchvision ResNet semantics, torchvision parameter names.
# ----------------------------------------------------------------------------

def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the
    (possibly downsampled) identity, then ReLU. Expansion 1."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)          # eps 1e-5, momentum 0.1
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            # Named 'downsample.0' (conv) and 'downsample.1' (BN) as in torchvision.
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with a 'cifar' stem (3x3/1 pad 1 conv + BN + ReLU, no max pool).

    layers, widths: blocks per stage and planes per stage; stage 0 has stride 1
    and every later stage strides by 2 in its first block.
    """

    def __init__(self, layers=(3, 3, 3), widths=(16, 32, 64), in_channels=1,
                 num_classes=10):
        super().__init__()
        stem = widths[0]                            # cifar stem width = widths[0]
        self.conv1 = conv3x3(in_channels, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        cin = stem
        for i, (n, planes) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, planes, stride))
                cin = planes
            # Attribute names layer1, layer2, ... give torchvision's keys.
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

        # Same initialisation as torchvision: He (fan_out) for convolutions,
        # BN scale 1 / shift 0; Linear keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def build_model():
    # Must match model.toml.
    return ResNet(layers=(3, 3, 3), widths=(16, 32, 64), in_channels=1, num_classes=10)


# ----------------------------------------------------------------------------
# Evaluation and export.
# ----------------------------------------------------------------------------

@torch.no_grad()
def logits_of(model, x, batch=500):
    """Eval-mode logits for x [N, 1, 28, 28], in order."""
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def export_state_dict(model):
    """float32, contiguous, torchvision names, without num_batches_tracked."""
    return {
        k: v.detach().to(torch.float32).contiguous().clone()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def label_slug(name):
    return name.lower().replace(" ", "_").replace("/", "_")


def export(model, test_x, test_y, test_images_u8, out_dir):
    from PIL import Image
    from safetensors.torch import load_file, save_file

    model.eval()
    weights_path = os.path.join(out_dir, "model.safetensors")
    save_file(export_state_dict(model), weights_path)
    os.chmod(weights_path, 0o644)   # save_file creates it owner-only

    logits = logits_of(model, test_x)
    preds = logits.argmax(1)
    np.save(os.path.join(out_dir, "test_logits.npy"),
            logits.numpy().astype("<f4"))
    with open(os.path.join(out_dir, "test_predictions.txt"), "w") as f:
        f.writelines(f"{int(p)}\n" for p in preds)
    with open(os.path.join(out_dir, "classes.txt"), "w") as f:
        f.writelines(f"{c}\n" for c in CLASSES)

    # The first two test images of every class, in test-file order.
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    lines = []
    for idx in range(test_y.shape[0]):
        label = int(test_y[idx])
        if sum(1 for l in lines if l[1] == label) >= 2:
            continue
        name = f"{idx:05d}_{label_slug(CLASSES[label])}.png"
        Image.fromarray(test_images_u8[idx], mode="L").save(os.path.join(img_dir, name))
        lines.append((name, label, int(preds[idx])))
        if len(lines) == 2 * len(CLASSES):
            break
    with open(os.path.join(img_dir, "labels.txt"), "w") as f:
        f.writelines(f"{n} {l} {p}\n" for n, l, p in lines)

    # ---- Sanity checks --------------------------------------------------
    # 1. A fresh model loaded from the exported file gives the same logits.
    fresh = build_model()
    missing, unexpected = fresh.load_state_dict(load_file(weights_path), strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    reloaded = logits_of(fresh, test_x)
    diff = (reloaded - logits).abs().max().item()
    print(f"reload check: max |logit diff| = {diff:.3g}")
    assert diff == 0.0 or diff < 1e-5 * max(1.0, logits.abs().max().item())
    # 2. The saved .npy round-trips.
    saved = np.load(os.path.join(out_dir, "test_logits.npy"))
    assert saved.dtype == np.dtype("<f4") and saved.shape == (test_x.shape[0], 10)
    assert np.array_equal(saved, logits.numpy())
    # 3. Logit scale and accuracy.
    print(f"max |logit| = {logits.abs().max().item():.3f}, "
          f"mean max logit = {logits.max(1).values.mean().item():.3f}")
    y = torch.from_numpy(test_y)
    correct = preds == y
    print(f"test accuracy: {correct.float().mean().item() * 100:.2f}% "
          f"({int(correct.sum())}/{y.shape[0]})")
    for c, name in enumerate(CLASSES):
        m = y == c
        print(f"  {c} {name:12s} {correct[m].float().mean().item() * 100:6.2f}%")
    print(f"exported {sum(v.numel() for v in export_state_dict(model).values())} "
          f"parameters/buffers to {weights_path}")


# ----------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", default="/tmp/resnetc_fashion_ckpt.pt")
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    train_u8, train_y = load_split("train")
    test_u8, test_y = load_split("t10k")
    print(f"train {train_u8.shape}, test {test_u8.shape}", flush=True)
    # Pad once (zeros, 2 pixels each side) so augmentation is just cropping.
    train_padded = F.pad(to_input(train_u8), (2, 2, 2, 2))
    train_labels = torch.from_numpy(train_y)
    test_x = to_input(test_u8)
    test_labels = torch.from_numpy(test_y)

    model = build_model()
    steps_per_epoch = (train_u8.shape[0] + args.batch - 1) // args.batch
    # SGD with Nesterov momentum and weight decay; one-cycle schedule (warm up
    # to the peak lr over the first 25% of steps, cosine anneal to ~0 after).
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                          nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=0.25, cycle_momentum=False)
    gen = torch.Generator().manual_seed(0)   # shuffling and augmentation
    start_epoch, total_time = 0, 0.0

    if os.path.exists(args.checkpoint):
        ck = torch.load(args.checkpoint, weights_only=False)
        if ck["epochs"] != args.epochs:
            raise SystemExit(f"{args.checkpoint} was made for {ck['epochs']} epochs; "
                             "delete it or pass the same --epochs")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["rng"])
        start_epoch, total_time = ck["epoch"], ck["time"]
        print(f"resumed from {args.checkpoint} after epoch {start_epoch}", flush=True)

    crit = nn.CrossEntropyLoss()
    for epoch in range(start_epoch, args.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(train_u8.shape[0], generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = perm[step * args.batch:(step + 1) * args.batch]
            x = augment(train_padded, idx, gen)
            y = train_labels[idx]
            out = model(x)
            loss = crit(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * y.shape[0]
            correct += (out.argmax(1) == y).sum().item()
            seen += y.shape[0]
            if step % 100 == 0:
                print(f"  epoch {epoch + 1} step {step}/{steps_per_epoch} "
                      f"loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.4f} "
                      f"({time.time() - t0:.0f}s)", flush=True)
        train_time = time.time() - t0
        total_time += train_time
        test_acc = (logits_of(model, test_x).argmax(1) == test_labels).float().mean().item()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / seen:.4f} "
              f"train acc {correct / seen * 100:.2f}% test acc {test_acc * 100:.2f}% "
              f"time {train_time:.0f}s (total {total_time / 60:.1f} min)", flush=True)
        torch.save({"epochs": args.epochs, "epoch": epoch + 1, "time": total_time,
                    "model": model.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "gen": gen.get_state(),
                    "rng": torch.get_rng_state()}, args.checkpoint + ".tmp")
        os.replace(args.checkpoint + ".tmp", args.checkpoint)

    print(f"training done: {args.epochs} epochs, {total_time / 60:.1f} min "
          f"training wall time", flush=True)
    export(model, test_x, test_y, test_u8, args.out)


if __name__ == "__main__":
    main()
