"""Models: load an ``.om`` file or bytes, describe it, execute it on datasets of device buffers.

    model = acl.load_from_file("resnet.om")
    outputs = model.run(image)              # host arrays in, host arrays out
    model.execute(inputs_ds, outputs_ds)    # the AscendCL way: datasets of device memory
"""
from __future__ import annotations

import os

import numpy as np

from opencann.acl import state
from opencann.acl.context import current_context
from opencann.acl.memory import Memory
from opencann.acl.state import STATE, initialized
from opencann.compiler import om
from opencann.errors import AclError, ErrorCode
from opencann.runtime.model import LoadedModel, TensorDesc


class DataBuffer:
    """A view of ``size`` bytes of acl memory, as one model input or output."""

    def __init__(self, mem: Memory, size: int | None = None):
        if not isinstance(mem, Memory):
            raise AclError(ErrorCode.INVALID_PARAM, f"DataBuffer needs acl memory, got {type(mem).__name__}")
        size = mem.size if size is None else size
        if not isinstance(size, int) or not 0 <= size <= mem.size:
            raise AclError(ErrorCode.INVALID_PARAM, f"DataBuffer size {size!r} exceeds the memory's {mem.size}")
        self.mem, self.size = mem, size


class Dataset:
    """An ordered list of data buffers, with optional per-buffer tensor shapes for dynamic inputs."""

    def __init__(self, buffers: list[DataBuffer] | None = None):
        self.buffers: list[DataBuffer] = []
        self.dims: dict[int, tuple[int, ...]] = {}
        for b in buffers or []:
            self.add(b)

    def add(self, buf: DataBuffer) -> Dataset:
        if not isinstance(buf, DataBuffer):
            raise AclError(ErrorCode.INVALID_PARAM, f"a dataset holds DataBuffers, got {type(buf).__name__}")
        self.buffers.append(buf)
        return self

    def set_dims(self, index: int, dims) -> None:
        """The actual shape of buffer ``index`` (for inputs with dynamic dimensions)."""
        if not 0 <= index < len(self.buffers):
            raise AclError(ErrorCode.INVALID_PARAM, f"dataset has no buffer {index}")
        self.dims[index] = tuple(int(d) for d in dims)

    def __len__(self) -> int:
        return len(self.buffers)

    def __getitem__(self, i: int) -> DataBuffer:
        return self.buffers[i]


class ModelDesc:
    """Input/output names, dtypes, shapes, byte sizes and formats of a loaded model."""

    def __init__(self, model: LoadedModel):
        self.inputs: list[TensorDesc] = model.inputs
        self.outputs: list[TensorDesc] = model.outputs
        self.dynamic_batch_sizes: list[int] = model.dynamic_batch_sizes

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def input_size(self, i: int) -> int:
        """Bytes of input ``i`` (at the largest dynamic batch size when the batch is dynamic)."""
        return _size(self._get(self.inputs, i, "input"), self.dynamic_batch_sizes)

    def output_size(self, i: int) -> int:
        return _size(self._get(self.outputs, i, "output"), self.dynamic_batch_sizes)

    def input_index(self, name: str) -> int:
        for i, d in enumerate(self.inputs):
            if d.name == name:
                return i
        raise AclError(ErrorCode.INVALID_PARAM, f"model has no input named '{name}'")

    @staticmethod
    def _get(descs: list[TensorDesc], i: int, what: str) -> TensorDesc:
        if not isinstance(i, int) or not 0 <= i < len(descs):
            raise AclError(ErrorCode.INVALID_PARAM, f"model has no {what} {i!r} ({len(descs)} {what}s)")
        return descs[i]


def _size(d: TensorDesc, batches: list[int]) -> int:
    if d.is_static or not batches:
        return d.size
    shape = [max(batches) if i == 0 and s < 0 else s for i, s in enumerate(d.shape)]
    return int(np.prod(shape)) * d.dtype.itemsize if all(s >= 0 for s in shape) else 0


class Model:
    """A loaded model: the Python handle of a model id."""

    def __init__(self, loaded: LoadedModel):
        self._loaded = loaded
        self.id = loaded.id
        self.desc = ModelDesc(loaded)
        self._batch: int | None = None
        self._current_output_dims: list[tuple[int, ...]] = [d.shape for d in loaded.outputs]

    @property
    def loaded(self) -> LoadedModel:
        return STATE.models.get(self.id)

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Execute on host arrays and return host arrays: the shortest way to use a model."""
        return self.loaded.execute(inputs)  # checks and converts them

    def set_dynamic_batch_size(self, dataset: Dataset, index: int, batch: int) -> None:
        """Choose the batch size of the next execution (one of the sizes the model was built for)."""
        if not self.desc.dynamic_batch_sizes:
            raise AclError(ErrorCode.MODEL_NOT_DYNAMIC, f"model {self.id} was not built with --dynamic_batch_size")
        if batch not in self.desc.dynamic_batch_sizes:
            raise AclError(ErrorCode.INVALID_PARAM, f"batch {batch} is not one of {self.desc.dynamic_batch_sizes}")
        self._batch = batch

    def current_output_dims(self, i: int) -> tuple[int, ...]:
        """The shape output ``i`` had in the last execution."""
        ModelDesc._get(self.desc.outputs, i, "output")
        return self._current_output_dims[i]

    def _read_inputs(self, ds: Dataset) -> list[np.ndarray]:
        if not isinstance(ds, Dataset) or len(ds) != self.desc.num_inputs:
            raise AclError(ErrorCode.MODEL_INPUT_NOT_MATCH,
                           f"model {self.id} takes {self.desc.num_inputs} input buffers, got "
                           f"{len(ds) if isinstance(ds, Dataset) else type(ds).__name__}")
        arrays = []
        for i, (desc, buf) in enumerate(zip(self.desc.inputs, ds.buffers, strict=True)):
            shape = ds.dims.get(i) or tuple(self._batch if (d < 0 and j == 0 and self._batch) else d
                                            for j, d in enumerate(desc.shape))
            if any(d < 0 for d in shape):
                raise AclError(ErrorCode.MODEL_INPUT_NOT_MATCH, f"input {i} '{desc.name}' has dynamic dims "
                               f"{list(desc.shape)}: set them with dataset.set_dims({i}, dims)")
            need = int(np.prod(shape, dtype=np.int64)) * desc.dtype.itemsize
            if need > buf.size:
                raise AclError(ErrorCode.MODEL_INPUT_NOT_MATCH, f"input {i} '{desc.name}' of shape {list(shape)} "
                               f"needs {need} bytes, its buffer has {buf.size}")
            arrays.append(buf.mem._raw()[:need].view(desc.dtype).reshape(shape).copy())
        return arrays

    def _write_outputs(self, outputs: list[np.ndarray], ds: Dataset) -> None:
        if not isinstance(ds, Dataset) or len(ds) != len(outputs):
            raise AclError(ErrorCode.MODEL_OUTPUT_NOT_MATCH,
                           f"model {self.id} has {len(outputs)} outputs, the output dataset "
                           f"{len(ds) if isinstance(ds, Dataset) else type(ds).__name__}")
        for i, (arr, buf) in enumerate(zip(outputs, ds.buffers, strict=True)):
            raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
            if raw.nbytes > buf.size:
                raise AclError(ErrorCode.MODEL_OUTPUT_NOT_MATCH, f"output {i} needs {raw.nbytes} bytes, "
                               f"its buffer has {buf.size}")
            buf.mem._raw()[:raw.nbytes] = raw
        self._current_output_dims = [tuple(a.shape) for a in outputs]

    def execute(self, inputs: Dataset, outputs: Dataset) -> None:
        """Run synchronously: read the input buffers, write the output buffers."""
        self._write_outputs(self.loaded.execute(self._read_inputs(inputs)), outputs)

    def execute_async(self, inputs: Dataset, outputs: Dataset, stream) -> None:
        """Enqueue one execution on ``stream`` (inputs are read when the stream reaches it)."""
        loaded = self.loaded
        stream.enqueue(lambda: self._write_outputs(loaded.execute(self._read_inputs(inputs)), outputs))

    def unload(self) -> None:
        STATE.models.unload(self.id)

    def __repr__(self) -> str:
        return f"<acl.Model id={self.id} inputs={[d.name for d in self.desc.inputs]}>"


@initialized
def load_from_mem(data: bytes) -> Model:
    """Load a model from ``.om`` bytes onto the current context's device."""
    compiled = om.loads(data)
    return _load(compiled)


@initialized
def load_from_file(path: str | os.PathLike) -> Model:
    """Load an ``.om`` file onto the current context's device."""
    return _load(om.load(path))


def _load(compiled: om.CompiledModel) -> Model:
    ctx = current_context()
    if compiled.target != ctx.device.kind:
        raise AclError(ErrorCode.RESOURCE_NOT_MATCH, f"model was built for '{compiled.target}', the current "
                       f"device is '{ctx.device.kind}' (rebuild with --soc_version {ctx.device.kind})")
    return Model(STATE.models.load(compiled, ctx.device, state.allocator(ctx.device_id)))


@initialized
def unload(model: Model | int) -> None:
    STATE.models.unload(model.id if isinstance(model, Model) else model)
