"""``opencann demo``: the main job on bundled data, end to end.

Compiles the bundled image classifier (ONNX) to an ``.om`` with ``atc``, loads it through the acl API,
classifies the bundled images, and prints each top-5 with the latency.
"""
from __future__ import annotations

import json
import pathlib
import statistics
import tempfile
import time

import numpy as np

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"


def register(sub) -> None:
    p = sub.add_parser("demo", help="compile and run the bundled image classifier", description=__doc__)
    p.add_argument("--images", nargs="*", help="image files to classify (default: the bundled samples)")
    p.set_defaults(handler=run_demo)


def load_image(path: pathlib.Path) -> np.ndarray:
    """An image as the model wants it: 1x3x64x64 float32 in [0, 1]."""
    from PIL import Image

    from opencann.errors import AclError, ErrorCode

    try:
        img = Image.open(path).convert("RGB").resize((64, 64))
    except OSError as exc:
        raise AclError(ErrorCode.INVALID_FILE, f"cannot read image '{path}': {exc}") from None
    return (np.asarray(img, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def run_demo(args) -> int:
    import opencann.acl as acl
    from opencann.cli.main import main as cli

    labels = json.loads((DATA / "shapes_labels.json").read_text())
    images = [pathlib.Path(p) for p in args.images] if args.images else sorted(DATA.glob("sample_*.png"))
    with tempfile.TemporaryDirectory() as tmp:
        om_path = pathlib.Path(tmp) / "shapes_cnn"
        print("1. Compile the bundled classifier with ATC:")
        print(f"   opencann atc --model {DATA / 'shapes_cnn.onnx'} --framework 5 --output {om_path} "
              "--input_shape image:1,3,64,64")
        status = cli(["atc", "--model", str(DATA / "shapes_cnn.onnx"), "--framework", "5", "--output", str(om_path),
                      "--input_shape", "image:1,3,64,64"])
        if status:
            return status
        print("\n2. Load it through the acl API and classify the bundled images:")
        acl.init()
        try:
            acl.set_device(0)
            model = acl.load_from_file(f"{om_path}.om")
            desc = model.desc.inputs[0]
            print(f"   model {model.id}: input {desc.name} {desc.dtype} {list(desc.shape)} "
                  f"({model.desc.input_size(0)} bytes), {len(labels)} classes")
            times, correct = [], 0
            for path in images:
                x = load_image(path)
                t0 = time.perf_counter()
                (logits,) = model.run(x)
                times.append((time.perf_counter() - t0) * 1e3)
                probs = softmax(logits[0])
                top = np.argsort(-probs)[:5]
                correct += labels[top[0]].replace(" ", "_") in path.name
                print(f"   {path.name}:")
                for rank, k in enumerate(top, 1):
                    print(f"     {rank}. {labels[k]:<20} {probs[k]:.4f}")
            model.unload()
        finally:
            acl.finalize()
    print(f"\n   {len(images)} images, latency per image: median {statistics.median(times):.2f} ms, "
          f"min {min(times):.2f} ms" + (f"; top-1 matches the file name for {correct}/{len(images)}"
                                          if not args.images else ""))
    print("\nNext: `opencann migrate -i train.py -o out/` rewrites a TensorFlow training script for opencann "
          "(with a report of what needs manual work), and `import opencann.tf as oc; oc.enable()` trains it on "
          "these kernels.")
    return 0
