"""Train the demo's small image classifier and write the files `make demo` ships with.

    .venv/bin/python tools/train_demo_model.py

Draws synthetic 64x64 RGB images of eight shape classes (random colours, sizes, positions, noise),
trains a small CNN with PyTorch for a few epochs, exports it to ONNX (with BatchNorm kept, opset 17) as
``opencann/data/shapes_cnn.onnx``, and saves eight held-out sample images as PNG files beside it.
The model and images are committed, so the demo needs neither PyTorch nor training.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

CLASSES = ["circle", "square", "triangle", "cross", "ring", "horizontal stripes", "vertical stripes", "checkerboard"]
SIZE = 64
OUT = pathlib.Path(__file__).resolve().parents[1] / "opencann" / "data"


def draw(label: int, rng: np.random.Generator) -> np.ndarray:
    bg = tuple(int(c) for c in rng.integers(0, 100, 3))
    fg = tuple(int(c) for c in rng.integers(130, 256, 3))
    img = Image.new("RGB", (SIZE, SIZE), bg)
    d = ImageDraw.Draw(img)
    r = int(rng.integers(12, 26))
    cx, cy = (int(v) for v in rng.integers(r + 2, SIZE - r - 2, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    name = CLASSES[label]
    if name == "circle":
        d.ellipse(box, fill=fg)
    elif name == "square":
        d.rectangle(box, fill=fg)
    elif name == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif name == "cross":
        w = max(3, r // 3)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fg)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fg)
    elif name == "ring":
        d.ellipse(box, outline=fg, width=max(3, r // 4))
    else:
        step = int(rng.integers(6, 12))
        for i in range(0, SIZE, step):
            for j in range(0, SIZE, step):
                on = {"horizontal stripes": (i // step) % 2 == 0, "vertical stripes": (j // step) % 2 == 0,
                      "checkerboard": (i // step + j // step) % 2 == 0}[name]
                if on:
                    d.rectangle((j, i, j + step - 1, i + step - 1), fill=fg)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 12, (SIZE, SIZE, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW in [0, 1], as the demo feeds the model."""
    return (images.astype(np.float32) / 255.0).transpose(0, 3, 1, 2).copy()


def network() -> nn.Module:
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, len(CLASSES)))


def main() -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    labels = rng.integers(0, len(CLASSES), 6000)
    x = torch.from_numpy(preprocess(np.stack([draw(int(c), rng) for c in labels])))
    y = torch.from_numpy(labels)
    model = network()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for epoch in range(6):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        print(f"epoch {epoch}: loss {loss.item():.4f}")
    model.eval()
    test_labels = rng.integers(0, len(CLASSES), 800)
    test = torch.from_numpy(preprocess(np.stack([draw(int(c), rng) for c in test_labels])))
    with torch.no_grad():
        acc = (model(test).argmax(1).numpy() == test_labels).mean()
    print(f"held-out accuracy: {acc:.3f}")
    OUT.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (test[:1],), OUT / "shapes_cnn.onnx", opset_version=17, dynamo=False,
                      do_constant_folding=False, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    (OUT / "shapes_labels.json").write_text(json.dumps(CLASSES, indent=1) + "\n")
    for f in OUT.glob("sample_*.png"):
        f.unlink()
    for c, name in enumerate(CLASSES):
        Image.fromarray(draw(c, rng)).save(OUT / f"sample_{c}_{name.replace(' ', '_')}.png")


if __name__ == "__main__":
    main()
