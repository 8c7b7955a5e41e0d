"""The entry point of a small project: the only file that gets oc.enable()."""
import argparse

import numpy as np
import tensorflow as tf

from data import make_dataset
from model import build_model


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    return parser.parse_args()


def main():
    args = parse_args()
    tf.keras.utils.set_random_seed(13)
    model = build_model()
    history = model.fit(make_dataset(np.random.default_rng(13)), epochs=args.epochs, verbose=0)
    print("final loss:", history.history["loss"][-1])


if __name__ == "__main__":
    main()
