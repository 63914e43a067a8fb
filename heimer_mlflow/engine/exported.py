"""Exported programs (MLflow 3's default ``pt2`` format) as the engine needs a model.

``mlflow.pytorch.load_model`` gives a ``pt2`` model back as the ``fx.GraphModule`` of a
``torch.export`` program: the network's operations, flattened, with no module ever called, so a
forward hook on ``features.4.0`` never fires. What the graph keeps is where each operation came
from: every node's ``meta["nn_module_stack"]`` names the module paths and classes it ran inside.
:class:`ExportedModel` uses that to rewrite the graph once per layer the engine asks for: an
identity module (a *tap*) is inserted after the last operation of that module path and takes
over its users, so the layer's output passes through a module call again. Hooks on the tap see
exactly the tensor the original module returned, and autograd differentiates the graph's aten
operations as it differentiates the eager module's: Grad-CAM, HiResCAM and feature maps come out
the same (tests/test_pt2.py compares them with the pickled module on the same weights).

What else a program needs to behave like the eager module in ``eval()``:

- *Mode.* A program has its train/eval behaviour baked in when it was exported (batch norm's
  ``training`` argument, dropout's ``train``). One exported in training mode is rewritten to
  eval (running statistics, no dropout), and ``eval_rewrites`` says what was changed.
- *Batch size.* Exported from a one-subject example, the batch axis is specialised to 1 and any
  other batch size fails the program's guard. A static batch size ``b`` is honoured here: larger
  batches run ``b`` subjects at a time, and a remainder is padded with zero volumes whose outputs
  are dropped (the program is in eval mode, so subjects do not affect each other).
  ``GradCam3d`` splits its batches the same way (one capture per call). A dynamic batch axis is
  used as it is.
- *Randomised weights* (the sanity check) come from ``reset_parameters``, which re-initialises
  the parameters and buffers of every layer whose class PyTorch defines (convolutions, linear,
  normalisation layers) the way that class's own ``reset_parameters`` does, in the same order,
  so a seed gives the pickled module's randomised weights too.
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import torch
from torch import fx, nn

from heimer_mlflow.errors import HeimerError

TAP_PREFIX = "heimer_tap_"
# nn_module_stack class names (module.__qualname__ with its module) whose parameters
# ``reset_parameters`` re-initialises like PyTorch's own reset_parameters of that class.
_KAIMING = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear")
_NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
          "GroupNorm", "LayerNorm", "SyncBatchNorm")
# aten operations whose last-but-some argument is the training flag, by (op name, argument index)
_TRAINING_FLAGS = {"batch_norm": 5, "dropout": 2, "feature_dropout": 2, "alpha_dropout": 2,
                   "feature_alpha_dropout": 2, "native_dropout": 2}


def is_exported(module) -> bool:
    """Whether ``module`` is a ``torch.export`` program's module (what MLflow loads from pt2)."""
    return isinstance(module, fx.GraphModule) and any(
        "nn_module_stack" in node.meta for node in module.graph.nodes if node.op == "call_function"
    )


class ExportedModel(nn.Module):
    """A ``torch.export`` program behaving as the engine expects of a module (see the module
    docstring): its layers (``engine.layers.LayerAccess``: ``conv_layers()``, ``layer_names()``,
    ``layer(path)``, a hookable tap, and ``batch_size``), eval mode, any batch size."""

    def __init__(self, program: fx.GraphModule, archive: bytes | None = None):
        super().__init__()
        self.program = program
        # The .pt2 file's bytes, when loaded from one: a graph module of torch.export does not
        # pickle, so torchrun's other processes get the model as these bytes (see __reduce__).
        self.archive = archive
        self.layer_types = _layer_types(program)  # module path -> class name, in graph order
        self.eval_rewrites = _to_eval_mode(program)
        self.batch_size, self.input_shape = _input_spec(program)
        self.taps: dict[str, str] = {}  # module path -> name of its tap in the program
        self.training = False

    # -- what the engine asks of a module --------------------------------------------------------

    def conv_layers(self) -> list[str]:
        """Module paths of the program's ``Conv3d`` layers, in registration order (as
        ``named_modules`` of the original module lists them: parameters are kept in that order)."""
        owners = [path for path, _ in self.program.named_modules() if path]
        in_graph = [path for path, kind in self.layer_types.items() if kind == "Conv3d"]
        ordered = [path for path in owners if path in in_graph]
        return ordered + [path for path in in_graph if path not in ordered]

    def layer_names(self) -> list[str]:
        """Every module path the program's operations ran in, in graph order."""
        return list(self.layer_types)

    def layer(self, path: str) -> nn.Module:
        """The tap after module ``path``'s last operation (inserted on first use): hooks on it see
        what the module returned, and what it returns goes on through the graph."""
        if path not in self.layer_types:
            raise HeimerError(
                f"target layer {path!r} is not a layer of this exported model (pt2): Conv3d layers to "
                f"choose from: {', '.join(self.conv_layers()) or 'none'}"
            )
        if path not in self.taps:
            self.taps[path] = _insert_tap(self.program, path, f"{TAP_PREFIX}{len(self.taps)}")
        return self.program.get_submodule(self.taps[path])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        size = self.batch_size
        if size is None or x.shape[0] == size:
            return self.program(x)
        outputs = []
        for start in range(0, x.shape[0], size):
            part = x[start : start + size]
            outputs.append(self.program(pad_batch(part, size))[: len(part)])
        return torch.cat(outputs)

    def check_input(self, x: torch.Tensor) -> None:
        """A HeimerError naming both shapes when ``x`` [B, C, D, H, W] does not fit the program."""
        expected = self.input_shape
        if expected is None:
            return
        given = tuple(x.shape[1:])
        if len(given) != len(expected) or any(e is not None and e != g for e, g in zip(expected, given)):
            shown = ", ".join("any" if e is None else str(e) for e in expected)
            raise HeimerError(
                f"the exported model (pt2) takes inputs of shape [B, {shown}], the cohort gives "
                f"{list(given)}: resample the cohort to the model's grid, or export the model on this grid"
            )

    def train(self, mode: bool = True) -> ExportedModel:
        """The program's mode is fixed (rewritten to eval when loaded); only the flag follows."""
        self.training = mode
        return self

    def _apply(self, fn, recurse=True):
        """``.to(device)`` moves the weights; tensors the graph creates follow them there."""
        super()._apply(fn, recurse)
        first = next(self.program.parameters(), None)
        if first is not None:
            _retarget_devices(self.program, first.device)
        return self

    def __reduce__(self):
        """Pickled as its archive and taps (torchrun sends rank 0's model to the other ranks)."""
        if self.archive is None:
            raise HeimerError("this exported program was not loaded from a .pt2 file, so it cannot be sent to "
                              "other processes: load it with heimer_mlflow.load_model")
        return _from_archive, (self.archive, list(self.taps), self.training)

    def __deepcopy__(self, memo):
        """A copy of the program and its taps (the sanity check's randomised copy); ``__reduce__``
        is for other processes, not for copies."""
        copied = ExportedModel.__new__(ExportedModel)
        memo[id(self)] = copied
        # torch's own pytree deprecation notice, raised while copying its graph module (and only
        # then: loading, wrapping and running a program raise none): nothing for a user to act on
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*treespec.*", category=FutureWarning)
            copied.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return copied

    # -- the sanity check's randomised weights -----------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self) -> list[str]:
        """Re-initialise every layer whose PyTorch class is known (see the module docstring), in
        the original module order; returns the paths of layers with parameters left as they were."""
        untouched = []
        for path, owner in self.program.named_modules():
            own = dict(owner.named_parameters(recurse=False))
            buffers = dict(owner.named_buffers(recurse=False))
            if not own and not buffers:
                continue
            kind = self.layer_types.get(path)
            if kind in _KAIMING:
                nn.init.kaiming_uniform_(own["weight"], a=math.sqrt(5))
                if "bias" in own:
                    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(own["weight"])
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                    nn.init.uniform_(own["bias"], -bound, bound)
            elif kind in _NORMS:
                for name, value in {"running_mean": 0, "running_var": 1, "num_batches_tracked": 0}.items():
                    if name in buffers:
                        buffers[name].fill_(value)
                if "weight" in own:
                    nn.init.ones_(own["weight"])
                if "bias" in own:
                    nn.init.zeros_(own["bias"])
            elif own:
                untouched.append(path)
        return untouched


def _from_archive(archive: bytes, taps: list[str], training: bool) -> ExportedModel:
    """An ExportedModel from a .pt2 file's bytes, with the same taps (in the same order)."""
    model = ExportedModel(torch.export.load(io.BytesIO(archive)).module(), archive)
    for path in taps:
        model.layer(path)
    return model.train(training)


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with zero volumes appended up to ``size`` subjects."""
    if x.shape[0] >= size:
        return x
    return torch.cat([x, x.new_zeros((size - x.shape[0], *x.shape[1:]))])


def _layer_types(program: fx.GraphModule) -> dict[str, str]:
    """Module path -> class name (e.g. ``Conv3d``) of every module the program's operations ran
    in, in the order the graph first enters them."""
    types: dict[str, str] = {}
    for node in program.graph.nodes:
        for path, kind in (node.meta.get("nn_module_stack") or {}).values():
            if path and path not in types:
                types[path] = str(getattr(kind, "__name__", kind)).rsplit(".", 1)[-1]
    return types


def _in_scope(node: fx.Node, path: str) -> bool:
    return any(entry[0] == path for entry in (node.meta.get("nn_module_stack") or {}).values())


def _insert_tap(program: fx.GraphModule, path: str, name: str) -> str:
    """Insert ``name`` (an identity module) after the last node of module ``path`` and route that
    node's users through it; returns ``name``."""
    last = [node for node in program.graph.nodes if node.op == "call_function" and _in_scope(node, path)][-1]
    program.add_submodule(name, nn.Identity())
    with program.graph.inserting_after(last):
        tap = program.graph.call_module(name, (last,))
    tap.meta["nn_module_stack"] = dict(last.meta.get("nn_module_stack") or {})
    last.replace_all_uses_with(tap, delete_user_cb=lambda user: user is not tap)
    program.recompile()
    return name


def _to_eval_mode(program: fx.GraphModule) -> list[str]:
    """Turn the training flags of batch norm and dropout off where the program was exported in
    training mode, and drop the batch-norm counters' updates; returns what was rewritten."""
    changed = []
    for node in list(program.graph.nodes):
        if node.op != "call_function":
            continue
        op = getattr(node.target, "_opname", getattr(node.target, "__name__", ""))
        index = _TRAINING_FLAGS.get(op)
        if index is not None and len(node.args) > index and node.args[index] is True:
            node.args = (*node.args[:index], False, *node.args[index + 1 :])
            changed.append(f"{node.name} ({op})")
        elif op == "add_" and not node.users and _is_counter(node.args[0]):
            program.graph.erase_node(node)
            changed.append(f"{node.name} (num_batches_tracked update)")
    if changed:
        program.recompile()
    return changed


def _is_counter(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and str(node.target).endswith("num_batches_tracked")


def _input_spec(program: fx.GraphModule) -> tuple[int | None, tuple[int | None, ...] | None]:
    """(static batch size or None, per-subject input shape with None for dynamic axes) of the
    program's single tensor input, as its placeholder's example value records them."""
    placeholders = [node for node in program.graph.nodes if node.op == "placeholder"]
    value = placeholders[0].meta.get("val") if len(placeholders) == 1 else None
    if not isinstance(value, torch.Tensor) or value.dim() < 1:
        return None, None
    dims = [int(d) if isinstance(d, int) else None for d in value.shape]
    return dims[0], tuple(dims[1:])


def _retarget_devices(program: fx.GraphModule, device: torch.device) -> None:
    """Tensors the graph creates (``device=`` arguments baked in at export) go where the weights are."""
    changed = False
    for node in program.graph.nodes:
        if isinstance(node.kwargs.get("device"), torch.device) and node.kwargs["device"] != device:
            node.kwargs = {**node.kwargs, "device": device}
            changed = True
    if changed:
        program.recompile()
