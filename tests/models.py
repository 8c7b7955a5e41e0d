"""Models that real users run, built with PyTorch and exported to ONNX, for tests and benchmarks."""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in: int = 784, hidden: int = 512, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    """ResNet-18's layout (``widths=(64, 128, 256, 512)``, two blocks a stage) at any width."""

    def __init__(self, widths=(16, 32, 64, 128), blocks=(2, 2, 2, 2), classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, c = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(c, w, 2 if j == 0 and i > 0 else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2's inverted-residual layout; ``width`` scales the channels (1.0 = the real network)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, width: float = 1.0, classes: int = 1000):
        super().__init__()
        c = int(32 * width)
        layers = [nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6()]
        for t, ch, n, s in self.SETTINGS:
            out = max(8, int(ch * width))
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        last = int(1280 * max(1.0, width))
        layers += [nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class EncoderLayer(nn.Module):
    """A post-norm transformer encoder layer, as in BERT: attention, Add+LayerNorm, GELU FFN, Add+LayerNorm."""

    def __init__(self, d_model: int, heads: int, d_ff: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = self.norm1(x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d)))
        return self.norm2(x + self.ff(x))


class TransformerEncoder(nn.Module):
    def __init__(self, vocab: int = 1000, d_model: int = 64, heads: int = 4, layers: int = 2, classes: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.layers = nn.Sequential(*[EncoderLayer(d_model, heads, 4 * d_model) for _ in range(layers)])
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens):
        return self.head(self.layers(self.embed(tokens)).mean(1))


class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int = 1000, d_embed: int = 32, hidden: int = 64, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_embed)
        self.lstm = nn.LSTM(d_embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens):
        _, (h, _) = self.lstm(self.embed(tokens))
        return self.head(h[-1])


def _randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Give BatchNorm layers non-trivial statistics so that folding and numerics are really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def export(model: nn.Module, example: np.ndarray, opset: int = 17, seed: int = 0) -> bytes:
    """The ONNX bytes of ``model`` in eval mode, traced on ``example``.

    Constant folding is off so that BatchNormalization stays in the graph, as in models exported from
    most training frameworks; folding it is the compiler's job.
    """
    torch.manual_seed(seed)
    _randomize_batchnorm(model, seed)
    model.eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(example),), buf, opset_version=opset, dynamo=False,
                          do_constant_folding=False, input_names=["input"], output_names=["output"])
    return buf.getvalue()


def build(name: str, batch: int = 1, size: str = "small") -> tuple[bytes, np.ndarray]:
    """(ONNX bytes, an input batch) for one of: mlp, resnet, mobilenet, transformer, lstm.

    ``size="small"`` gives test-sized networks; ``"full"`` the real ResNet-18, MobileNetV2 and a
    BERT-sized encoder for benchmarks.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    full = size == "full"
    if name == "mlp":
        model, x = MLP(), rng.standard_normal((batch, 784)).astype(np.float32)
    elif name == "resnet":
        widths = (64, 128, 256, 512) if full else (16, 32, 64, 128)
        res = 224 if full else 64
        model, x = ResNet(widths, classes=1000 if full else 10), rng.standard_normal((batch, 3, res, res))
    elif name == "mobilenet":
        res = 224 if full else 96
        model, x = MobileNetV2(1.0 if full else 0.35, 1000 if full else 10), rng.standard_normal((batch, 3, res, res))
    elif name == "transformer":
        d, heads, layers, seq = (768, 12, 12, 128) if full else (64, 4, 2, 16)
        model = TransformerEncoder(30522 if full else 1000, d, heads, layers)
        x = rng.integers(0, 1000, (batch, seq))
    elif name == "lstm":
        model, x = LSTMClassifier(), rng.integers(0, 1000, (batch, 20))
    else:
        raise ValueError(f"unknown model {name}")
    x = x.astype(np.float32) if x.dtype.kind == "f" else x.astype(np.int64)
    return export(model, x), x


MODELS = ("mlp", "resnet", "mobilenet", "transformer", "lstm")
