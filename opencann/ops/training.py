"""Training operators (seed layer 2, NN library): Dropout and the ``ai.onnx.preview.training`` optimizers
Adagrad, Adam and Momentum.

The optimizers update any number of tensors at once: their inputs are R (learning rate) and T (step
count), then each per-tensor group (X..., G..., and the optimizer's state) in order, and their outputs
are the new X..., then the new state groups.
"""
import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op

TRAINING_DOMAIN = "ai.onnx.preview.training"


# --- Dropout ----------------------------------------------------------------------------------------

@op("Dropout", since=1)
def dropout_legacy(x, *, ratio=0.5, is_test=0, consumed_inputs=None):
    """Opsets 1-9, run as in inference: the input and an all-ones mask of its dtype. ``is_test`` and
    ``consumed_inputs`` (opsets 1-6) do not change that."""
    return x, np.ones_like(x)


@op("Dropout", since=10)
def dropout_10(x, *, ratio=0.5):
    """Opsets 10-11, run as in inference: the input and an all-true mask."""
    return x, np.ones(x.shape, dtype=bool)


@op("Dropout", since=12)
def dropout(data, ratio=None, training_mode=None, *, seed=None):
    """In training mode zeroes each element with probability ``ratio`` and scales the rest by
    ``1 / (1 - ratio)``; the mask marks the kept elements. ``seed`` seeds NumPy's legacy generator."""
    p = 0.5 if ratio is None else float(ratio)
    if training_mode is None or not bool(training_mode) or p == 0:
        return data, np.ones(data.shape, dtype=bool)
    if not 0 <= p < 1:
        raise AclError(ErrorCode.INVALID_PARAM, f"Dropout ratio must be in [0, 1), got {p}")
    mask = np.random.RandomState(seed).uniform(0, 1.0, data.shape) >= p
    return np.where(mask, data * (1 / (1 - p)), 0).astype(data.dtype, copy=False), mask


# --- optimizers -------------------------------------------------------------------------------------

def _groups(tensors: tuple, count: int, name: str) -> list[tuple]:
    """Split the variadic inputs into ``count`` equal groups: [(X1, G1, ...), (X2, G2, ...), ...]."""
    if not tensors or len(tensors) % count:
        raise AclError(ErrorCode.INVALID_PARAM, f"{name} needs {count} inputs per tensor, got {len(tensors)}")
    n = len(tensors) // count
    return list(zip(*(tensors[i * n:(i + 1) * n] for i in range(count)), strict=True))


def _outputs(updates: list[tuple], groups: list[tuple]) -> tuple:
    """Per-tensor results [(X1', S1'), (X2', S2')] as the outputs X1', X2', S1', S2' in X's dtype."""
    return tuple(u[k].astype(g[0].dtype, copy=False)
                 for k in range(len(updates[0])) for u, g in zip(updates, groups, strict=True))


@op("Adagrad", since=1, domain=TRAINING_DOMAIN)
def adagrad(r, t, *tensors, decay_factor, epsilon, norm_coefficient):
    """X, H <- X - r' G' / (sqrt(H') + eps), H + G'^2 with G' = G + norm_coefficient X, r' = r / (1 + T decay)."""
    rate = float(r) / (1 + float(t) * decay_factor)
    groups = _groups(tensors, 3, "Adagrad")
    updates = []
    for x, g, h in groups:
        g = norm_coefficient * x + g
        h_new = h + g * g
        updates.append((x - rate * g / (np.sqrt(h_new) + epsilon), h_new))
    return _outputs(updates, groups)


@op("Adam", since=1, domain=TRAINING_DOMAIN)
def adam(r, t, *tensors, alpha, beta, epsilon, norm_coefficient, norm_coefficient_post):
    """Adam with bias correction from step T on (T = 0: no correction); outputs X, V, H."""
    step = float(t)
    rate = float(r) * np.sqrt(1 - beta ** step) / (1 - alpha ** step) if step > 0 else float(r)
    groups = _groups(tensors, 4, "Adam")
    updates = []
    for x, g, v, h in groups:
        g = norm_coefficient * x + g
        v_new = alpha * v + (1 - alpha) * g
        h_new = beta * h + (1 - beta) * g * g
        x_new = (x - rate * v_new / (np.sqrt(h_new) + epsilon)) * (1 - norm_coefficient_post)
        updates.append((x_new, v_new, h_new))
    return _outputs(updates, groups)


@op("Momentum", since=1, domain=TRAINING_DOMAIN)
def momentum(r, t, *tensors, alpha=None, beta=None, mode=None, norm_coefficient=None):
    """SGD with standard or Nesterov momentum; the first step (T = 0) takes the whole gradient."""
    if None in (alpha, beta, norm_coefficient) or mode not in ("standard", "nesterov"):
        raise AclError(ErrorCode.INVALID_PARAM, "Momentum needs alpha, beta, norm_coefficient and "
                       f"mode 'standard' or 'nesterov' (got mode {mode!r})")
    rate, scale = float(r), beta if float(t) > 0 else 1.0
    groups = _groups(tensors, 3, "Momentum")
    updates = []
    for x, g, v in groups:
        g = norm_coefficient * x + g
        v_new = alpha * v + scale * g
        step = g + alpha * v_new if mode == "nesterov" else v_new
        updates.append((x - rate * step, v_new))
    return _outputs(updates, groups)
