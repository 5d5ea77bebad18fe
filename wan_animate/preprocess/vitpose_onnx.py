"""Upstream's ViTPose-H ONNX graph -> `transformers`' ``VitPoseForPoseEstimation``, weights and all.

The ONNX file (exported from mmpose with torch's TorchScript exporter, weights in external files) is read by
structure, not by initializer names: op types, initializer shapes and their order give the patch embedding,
the position embedding, each block's LayerNorms and linear layers (MatMul weights are stored transposed;
LayerNorm may be one op or decomposed), and the deconvolution head with its BatchNorms. Every parameter of the
torch model must get exactly one source of the right shape, else `UnsupportedPoseGraph` tells the user to run
the file with onnxruntime instead.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import WanAnimateError

INPUT_SIZE = (256, 192)
"""Model input (height, width)."""


class UnsupportedPoseGraph(WanAnimateError):
    """The ONNX graph is not the ViTPose layout the torch backend understands (`PoseEstimator.from_pretrained`
    then runs it in onnxruntime).

    Attributes:
        detail: What in the graph did not fit.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"The pose model's ONNX graph can't be read into the torch backend: {detail}. "
            "Use backend='onnxruntime' for this file."
        )
        self.detail = detail


@dataclass
class _Tensor:
    """A weight found in the graph: where it came from, its shape, and how to read it (lazily: ViT-H is 2.5 GB)."""

    origin: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]


@dataclass
class _Layer:
    """One weight-bearing op (or an op that tells a size), in graph order."""

    kind: str
    position: int
    tensors: dict[str, _Tensor] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)


class _OnnxGraph:
    """Read-only view of an ONNX graph: producers, consumers and constants (initializers or Constant nodes)."""

    def __init__(self, model, base_dir: Path) -> None:
        self.nodes = list(model.graph.node)
        self.inputs = list(model.graph.input)
        self.initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        self.base_dir = base_dir
        self.producer = {output: node for node in self.nodes for output in node.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)

    def source(self, name: str) -> str:
        """The name behind any Identity ops."""
        while name in self.producer and self.producer[name].op_type == "Identity":
            name = self.producer[name].input[0]
        return name

    def is_const(self, name: str) -> bool:
        name = self.source(name)
        return name in self.initializers or (name in self.producer and self.producer[name].op_type == "Constant")

    def shape(self, name: str) -> tuple[int, ...] | None:
        name = self.source(name)
        if name in self.initializers:
            return tuple(int(dim) for dim in self.initializers[name].dims)
        if self.is_const(name):
            return tuple(self.value(name).shape)
        return None

    def value(self, name: str) -> np.ndarray:
        """A constant's value; external data is read from its file without keeping it in the graph."""
        import onnx
        from onnx import numpy_helper

        name = self.source(name)
        if name in self.initializers:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(self.initializers[name])
            return numpy_helper.to_array(tensor, base_dir=str(self.base_dir))
        node = self.producer[name]
        for attribute in node.attribute:
            if attribute.name == "value":
                return numpy_helper.to_array(attribute.t)
            if attribute.name in ("value_float", "value_int"):
                return np.array(onnx.helper.get_attribute_value(attribute))
            if attribute.name in ("value_floats", "value_ints"):
                return np.array(list(onnx.helper.get_attribute_value(attribute)))
        raise UnsupportedPoseGraph(f"constant {name} has no value")

    def tensor(self, name: str, origin: str, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> _Tensor:
        shape = self.shape(name)
        if shape is None:
            raise UnsupportedPoseGraph(f"{origin} is not a constant")
        if transform is not None:
            shape = tuple(transform(np.empty(shape, dtype=np.uint8)).shape)
        load = (lambda: transform(self.value(name))) if transform is not None else (lambda: self.value(name))
        return _Tensor(origin=f"{origin} ({self.source(name)})", shape=shape, load=load)

    def ints(self, name: str) -> list[int | None] | None:
        """The integer values a shape tensor is built from, None where they are only known at run time."""
        name = self.source(name)
        if self.is_const(name):
            return [int(value) for value in np.ravel(self.value(name))]
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type in ("Unsqueeze", "Cast"):
            values = self.ints(node.input[0])
            return values if values is not None else [None]
        if node.op_type == "Concat":
            parts = [self.ints(part) for part in node.input]
            return [value for part in parts for value in (part if part is not None else [None])]
        return [None]


def _attributes(node) -> dict:
    import onnx

    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _other_input(node, name: str) -> str:
    return node.input[1] if node.input[0] == name else node.input[0]


def _decomposed_layer_norms(graph: _OnnxGraph) -> tuple[dict[int, _Layer], set[int]]:
    """LayerNorms exported before opset 17 as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div, then Mul and Add.

    Returns the norm found at the position of its final Add, and the ids of all nodes it is made of.
    """
    position = {id(node): index for index, node in enumerate(graph.nodes)}
    norms: dict[int, _Layer] = {}
    used: set[int] = set()
    for div in graph.nodes:
        if div.op_type != "Div":
            continue
        sub, sqrt = graph.producer.get(div.input[0]), graph.producer.get(div.input[1])
        if sub is None or sqrt is None or sub.op_type != "Sub" or sqrt.op_type != "Sqrt":
            continue
        add_eps = graph.producer.get(sqrt.input[0])
        if add_eps is None or add_eps.op_type != "Add":
            continue
        eps_name = next((name for name in add_eps.input if graph.is_const(name)), None)
        variance = graph.producer.get(_other_input(add_eps, eps_name)) if eps_name else None
        square = graph.producer.get(variance.input[0]) if variance is not None else None
        mean = graph.producer.get(sub.input[1])
        if (
            variance is None
            or variance.op_type != "ReduceMean"
            or square is None
            or square.op_type != "Pow"
            or square.input[0] != sub.output[0]
            or mean is None
            or mean.op_type != "ReduceMean"
            or mean.input[0] != sub.input[0]
        ):
            continue
        scale_nodes = graph.consumers[div.output[0]]
        if len(scale_nodes) != 1 or scale_nodes[0].op_type != "Mul":
            continue
        mul = scale_nodes[0]
        shift_nodes = graph.consumers[mul.output[0]]
        if len(shift_nodes) != 1 or shift_nodes[0].op_type != "Add":
            continue
        add = shift_nodes[0]
        weight = _other_input(mul, div.output[0])
        bias = _other_input(add, mul.output[0])
        if not (graph.is_const(weight) and graph.is_const(bias)):
            continue
        layer = _Layer("norm", position[id(add)])
        layer.tensors = {
            "weight": graph.tensor(weight, "LayerNorm scale"),
            "bias": graph.tensor(bias, "LayerNorm bias"),
        }
        layer.attrs = {"eps": float(np.ravel(graph.value(eps_name))[0])}
        norms[layer.position] = layer
        used.update(id(node) for node in (mean, sub, square, variance, add_eps, sqrt, div, mul, add))
    return norms, used


def _sliced_constant(graph: _OnnxGraph, name: str) -> np.ndarray | None:
    """A constant, or a constant cut by Slice ops (an unfolded ``pos_embed[:, 1:]``), else None."""
    if graph.is_const(name):
        return graph.value(name)
    node = graph.producer.get(graph.source(name))
    if node is None or node.op_type != "Slice" or not all(graph.is_const(part) for part in node.input[1:]):
        return None
    data = _sliced_constant(graph, node.input[0])
    if data is None:
        return None
    starts, ends = graph.value(node.input[1]), graph.value(node.input[2])
    axes = graph.value(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
    steps = graph.value(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(len(starts), int)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis)] = slice(int(start), int(min(end, np.iinfo(np.int64).max)), int(step))
    return data[tuple(index)]


def _graph_layers(graph: _OnnxGraph) -> list[_Layer]:
    """Every weight-bearing op in graph (topological) order, plus the hints that give the attention heads."""
    norms, used = _decomposed_layer_norms(graph)
    used_adds: set[int] = set()
    layers: list[_Layer] = []
    for position, node in enumerate(graph.nodes):
        if position in norms:
            layers.append(norms[position])
        if id(node) in used or id(node) in used_adds:
            continue
        op, attrs = node.op_type, _attributes(node)
        if op in ("Conv", "ConvTranspose") and graph.is_const(node.input[1]):
            layer = _Layer("conv" if op == "Conv" else "deconv", position, attrs=attrs)
            layer.tensors["weight"] = graph.tensor(node.input[1], f"{op} weight")
            if len(node.input) > 2 and node.input[2]:
                layer.tensors["bias"] = graph.tensor(node.input[2], f"{op} bias")
            layers.append(layer)
        elif op == "BatchNormalization":
            layer = _Layer("batchnorm", position, attrs={"eps": float(attrs.get("epsilon", 1e-5))})
            for key, name in zip(("weight", "bias", "mean", "var"), node.input[1:5]):
                layer.tensors[key] = graph.tensor(name, f"BatchNormalization {key}")
            layers.append(layer)
        elif op == "LayerNormalization":
            if int(attrs.get("axis", -1)) != -1 or len(node.input) < 3 or not node.input[2]:
                raise UnsupportedPoseGraph("a LayerNormalization is not over the last axis with a bias")
            layer = _Layer("norm", position, attrs={"eps": float(attrs.get("epsilon", 1e-5))})
            layer.tensors = {
                "weight": graph.tensor(node.input[1], "LayerNormalization scale"),
                "bias": graph.tensor(node.input[2], "LayerNormalization bias"),
            }
            layers.append(layer)
        elif op == "MatMul" and graph.is_const(node.input[1]) and len(graph.shape(node.input[1]) or ()) == 2:
            # torch's Linear exported on 3-D input: x @ W^T with W^T stored as (in, out), then Add(bias).
            layer = _Layer("linear", position)
            layer.tensors["weight"] = graph.tensor(node.input[1], "MatMul weight (stored transposed)", np.transpose)
            out_features = layer.tensors["weight"].shape[0]
            for add in graph.consumers[node.output[0]]:
                bias = _other_input(add, node.output[0])
                if add.op_type == "Add" and graph.is_const(bias) and graph.shape(bias) == (out_features,):
                    layer.tensors["bias"] = graph.tensor(bias, "Linear bias")
                    used_adds.add(id(add))
                    break
            layers.append(layer)
        elif op == "Gemm" and graph.is_const(node.input[1]):
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
                raise UnsupportedPoseGraph("a Gemm has scaling or a transposed input")
            layer = _Layer("linear", position)
            transform = None if attrs.get("transB", 0) else np.transpose
            layer.tensors["weight"] = graph.tensor(node.input[1], "Gemm weight", transform)
            if len(node.input) > 2 and node.input[2]:
                layer.tensors["bias"] = graph.tensor(node.input[2], "Gemm bias")
            layers.append(layer)
        elif op == "Add":
            for operand in node.input:
                if graph.is_const(operand) and len(graph.shape(operand) or ()) != 3:
                    continue
                value = _sliced_constant(graph, operand)
                if value is not None and value.ndim == 3:
                    layers.append(_Layer("position", position, attrs={"value": value, "origin": graph.source(operand)}))
        elif op in ("Mul", "Div"):
            constant = next((name for name in node.input if graph.is_const(name)), None)
            if constant is not None and int(np.prod(graph.shape(constant))) == 1:
                value = float(np.ravel(graph.value(constant))[0])
                layers.append(_Layer("scale", position, attrs={"value": value if op == "Mul" else 1.0 / value}))
        elif op == "Reshape":
            layers.append(_Layer("reshape", position, attrs={"shape": graph.ints(node.input[1])}))
        elif op in ("Tanh", "Erf", "Gelu"):
            approximate = attrs.get("approximate", b"none")
            tanh = op == "Tanh" or (approximate.decode() if isinstance(approximate, bytes) else approximate) == "tanh"
            layers.append(_Layer("activation", position, attrs={"tanh": tanh}))
    return layers


_WEIGHT_KINDS = {"conv", "deconv", "batchnorm", "norm", "linear", "position"}


@dataclass
class _Block:
    norm1: _Layer
    qkv: _Layer
    proj: _Layer
    norm2: _Layer
    fc1: _Layer
    fc2: _Layer
    attention_hints: list[_Layer]
    mlp_hints: list[_Layer]


class _Cursor:
    """Walks the weight-bearing layers in order, checking each is the kind ViTPose has there."""

    def __init__(self, layers: list[_Layer]) -> None:
        self.layers = [layer for layer in layers if layer.kind in _WEIGHT_KINDS]
        self.index = 0

    def peek(self, offset: int = 0) -> str | None:
        index = self.index + offset
        return self.layers[index].kind if index < len(self.layers) else None

    def take(self, kind: str, what: str) -> _Layer:
        if self.peek() != kind:
            raise UnsupportedPoseGraph(f"expected the {what} ({kind}) but found {self.peek() or 'the end of the graph'}")
        self.index += 1
        return self.layers[self.index - 1]


def _read_vitpose_layout(layers: list[_Layer]):
    """Split the graph's layers into ViTPose's parts: patch embedding, position embedding, blocks, head."""
    cursor = _Cursor(layers)
    patch = cursor.take("conv", "patch embedding convolution")
    positions = []
    while cursor.peek() == "position":
        positions.append(cursor.take("position", "position embedding"))
    if not positions:
        raise UnsupportedPoseGraph("no position embedding Add follows the patch embedding")
    blocks = []
    while cursor.peek() == "norm" and cursor.peek(1) == "linear":
        parts = [cursor.take(kind, what) for kind, what in _BLOCK_PARTS]
        attention_hints = [layer for layer in layers if parts[1].position < layer.position < parts[2].position]
        mlp_hints = [layer for layer in layers if parts[4].position < layer.position < parts[5].position]
        blocks.append(_Block(*parts, attention_hints=attention_hints, mlp_hints=mlp_hints))
    if not blocks:
        raise UnsupportedPoseGraph("no transformer blocks (LayerNorm, qkv, proj, LayerNorm, fc1, fc2) were found")
    last_norm = cursor.take("norm", "final LayerNorm")
    head = []
    for _ in range(2):
        deconv = cursor.take("deconv", "decoder's transposed convolution")
        batchnorm = cursor.take("batchnorm", "decoder's BatchNorm") if cursor.peek() == "batchnorm" else None
        head.append((deconv, batchnorm))
    final = cursor.take("conv", "final 1x1 convolution")
    if cursor.peek() is not None:
        raise UnsupportedPoseGraph(f"unexpected {cursor.peek()} after the final convolution")
    return patch, positions, blocks, last_norm, head, final


_BLOCK_PARTS = [
    ("norm", "block's first LayerNorm"),
    ("linear", "attention qkv projection"),
    ("linear", "attention output projection"),
    ("norm", "block's second LayerNorm"),
    ("linear", "MLP fc1"),
    ("linear", "MLP fc2"),
]


def _attention_heads(block: _Block, hidden: int) -> int:
    """Heads from the qkv Reshape to (B, N, 3, heads, head_dim) or, failing that, from the q scale 1/sqrt(d)."""
    for hint in block.attention_hints:
        if hint.kind == "reshape" and hint.attrs["shape"]:
            shape = hint.attrs["shape"]
            for index in range(len(shape) - 1):
                if shape[index] == 3 and shape[index + 1] is not None and shape[index + 1] > 0:
                    return int(shape[index + 1])
    for hint in block.attention_hints:
        if hint.kind == "scale" and hint.attrs["value"] > 0:
            head_dim = round(hint.attrs["value"] ** -2)
            if head_dim > 0 and hidden % head_dim == 0 and abs(head_dim ** -0.5 - hint.attrs["value"]) < 1e-4:
                return hidden // head_dim
    raise UnsupportedPoseGraph("the number of attention heads could not be read from the graph")


def _vitpose_sources(layers: list[_Layer], image_size: tuple[int, int]):
    """Config of the matching `VitPoseForPoseEstimation`, and one source per entry of its state dict."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig

    patch, positions, blocks, last_norm, head, final = _read_vitpose_layout(layers)
    hidden, channels, kernel_h, kernel_w = patch.tensors["weight"].shape
    if channels != 3 or kernel_h != kernel_w or list(patch.attrs.get("strides", [])) != [kernel_h, kernel_w]:
        raise UnsupportedPoseGraph("the patch embedding is not a square convolution with stride equal to its size")
    if list(patch.attrs.get("pads", [0] * 4)) != [2, 2, 2, 2]:
        raise UnsupportedPoseGraph("the patch embedding's padding is not 2 (ViTPose's)")
    heads = {_attention_heads(block, hidden) for block in blocks}
    norms = [layer for block in blocks for layer in (block.norm1, block.norm2)] + [last_norm]
    epsilons = {layer.attrs["eps"] for layer in norms}
    mlp_hidden = blocks[0].fc1.tensors["weight"].shape[0]
    if len(heads) != 1 or len(epsilons) != 1 or mlp_hidden % hidden:
        raise UnsupportedPoseGraph("the blocks differ in heads or LayerNorm epsilon, or the MLP ratio is not whole")
    uses_tanh = any(hint.kind == "activation" and hint.attrs["tanh"] for block in blocks for hint in block.mlp_hints)
    num_labels = final.tensors["weight"].shape[0]
    backbone = VitPoseBackboneConfig(
        image_size=list(image_size),
        patch_size=[kernel_h, kernel_w],
        hidden_size=hidden,
        num_hidden_layers=len(blocks),
        num_attention_heads=heads.pop(),
        mlp_ratio=mlp_hidden // hidden,
        layer_norm_eps=epsilons.pop(),
        qkv_bias="bias" in blocks[0].qkv.tensors,
        hidden_act="gelu_pytorch_tanh" if uses_tanh else "gelu",
        out_indices=[len(blocks)],
    )
    config = VitPoseConfig(backbone_config=backbone, use_simple_decoder=False, num_labels=num_labels)

    sources: dict[str, list[_Tensor]] = defaultdict(list)

    def add(key: str, tensor: _Tensor | None) -> None:
        if tensor is not None:
            sources[key].append(tensor)

    embeddings = "backbone.embeddings."
    add(embeddings + "patch_embeddings.projection.weight", patch.tensors["weight"])
    add(embeddings + "patch_embeddings.projection.bias", patch.tensors.get("bias"))
    add(embeddings + "position_embeddings", _position_embedding(positions, hidden))
    for index, block in enumerate(blocks):
        prefix = f"backbone.encoder.layer.{index}."
        _add_linear(add, prefix + "attention.output.dense", block.proj)
        _add_linear(add, prefix + "mlp.fc1", block.fc1)
        _add_linear(add, prefix + "mlp.fc2", block.fc2)
        _add_norm(add, prefix + "layernorm_before", block.norm1)
        _add_norm(add, prefix + "layernorm_after", block.norm2)
        # mmpose's fused qkv Linear: output rows are [q; k; v], each `hidden` wide (its reshape to (3, heads, d)).
        for part, name in enumerate(("query", "key", "value")):
            for key in ("weight", "bias"):
                if key in block.qkv.tensors:
                    add(prefix + f"attention.attention.{name}.{key}", _rows(block.qkv.tensors[key], part, hidden))
    _add_norm(add, "backbone.layernorm", last_norm)
    for index, (deconv, batchnorm) in enumerate(head, start=1):
        add(f"head.deconv{index}.weight", deconv.tensors["weight"])
        for key, tensor in _batchnorm_sources(deconv, batchnorm).items():
            add(f"head.batchnorm{index}.{key}", tensor)
    add("head.conv.weight", final.tensors["weight"])
    add("head.conv.bias", final.tensors.get("bias"))
    for deconv, _ in head:
        attrs = deconv.attrs
        if list(attrs.get("strides", [])) != [2, 2] or list(attrs.get("pads", [])) != [1, 1, 1, 1]:
            raise UnsupportedPoseGraph("the decoder's transposed convolutions are not kernel 4, stride 2, padding 1")
        if any(attrs.get("output_padding", [0, 0])) or deconv.tensors["weight"].shape[2:] != (4, 4):
            raise UnsupportedPoseGraph("the decoder's transposed convolutions are not kernel 4 without output padding")
    return config, dict(sources)


def _add_linear(add: Callable, prefix: str, layer: _Layer) -> None:
    add(prefix + ".weight", layer.tensors["weight"])
    add(prefix + ".bias", layer.tensors.get("bias"))


def _add_norm(add: Callable, prefix: str, layer: _Layer) -> None:
    add(prefix + ".weight", layer.tensors["weight"])
    add(prefix + ".bias", layer.tensors["bias"])


def _rows(tensor: _Tensor, part: int, width: int) -> _Tensor:
    """Rows ``part * width`` to ``(part + 1) * width`` of a (stacked) weight or bias."""
    return _Tensor(
        origin=f"{tensor.origin} rows {part * width}:{(part + 1) * width}",
        shape=(width, *tensor.shape[1:]),
        load=lambda: tensor.load()[part * width : (part + 1) * width],
    )


def _position_embedding(positions: list[_Layer], hidden: int) -> _Tensor:
    """transformers adds ``pe[:, 1:] + pe[:, :1]`` like mmpose: rebuild ``pe`` from the Adds of those slices.

    Constant folding turns mmpose's ``x + pos_embed[:, 1:] + pos_embed[:, :1]`` into two Adds of (1, P, C) and
    (1, 1, C) constants; each goes back to its slot (a missing class slot is zero, which adds nothing).
    """
    patch_terms = [layer.attrs["value"] for layer in positions if layer.attrs["value"].shape[1] != 1]
    class_terms = [layer.attrs["value"] for layer in positions if layer.attrs["value"].shape[1] == 1]
    if len(patch_terms) != 1 or len(class_terms) > 1 or patch_terms[0].shape[::2] != (1, hidden):
        raise UnsupportedPoseGraph("the position embedding Adds are not one (1, P, C) and at most one (1, 1, C) constant")
    patches = patch_terms[0].astype(np.float32)
    class_slot = class_terms[0].astype(np.float32) if class_terms else np.zeros((1, 1, hidden), np.float32)
    value = np.concatenate([class_slot, patches], axis=1)
    origins = ", ".join(layer.attrs["origin"] for layer in positions)
    return _Tensor(origin=f"position embedding Adds ({origins})", shape=value.shape, load=lambda: value)


def _batchnorm_sources(deconv: _Layer, batchnorm: _Layer | None) -> dict[str, _Tensor]:
    """The decoder BatchNorm's weight, bias and running stats, also when the export folded it or kept a bias.

    transformers' BatchNorm has eps 1e-5 and its deconvolution no bias: another eps goes into the variance,
    a deconvolution bias into the mean, and a folded BatchNorm becomes an identity plus that bias.
    """
    torch_eps = 1e-5
    bias = deconv.tensors.get("bias")
    if batchnorm is None:
        if bias is None:
            raise UnsupportedPoseGraph("a decoder transposed convolution has neither BatchNorm nor bias")
        channels = bias.shape
        return {
            "weight": _Tensor("folded BatchNorm: ones", channels, lambda: np.ones(channels, np.float32)),
            "bias": _Tensor(f"folded BatchNorm: {bias.origin}", channels, bias.load),
            "running_mean": _Tensor("folded BatchNorm: zeros", channels, lambda: np.zeros(channels, np.float32)),
            "running_var": _Tensor(
                "folded BatchNorm: 1 - eps", channels, lambda: np.full(channels, 1 - torch_eps, np.float32)
            ),
        }
    tensors, eps = batchnorm.tensors, batchnorm.attrs["eps"]
    mean, var = tensors["mean"], tensors["var"]
    if bias is not None:
        mean = _Tensor(f"{mean.origin} - {bias.origin}", mean.shape, lambda m=mean.load, b=bias.load: m() - b())
    if eps != torch_eps:
        origin = f"{var.origin} + eps {eps:g} - {torch_eps:g}"
        var = _Tensor(origin, var.shape, lambda v=var.load: v() + (eps - torch_eps))
    return {"weight": tensors["weight"], "bias": tensors["bias"], "running_mean": mean, "running_var": var}


def vitpose_from_onnx(onnx_path: Path, device: str = "cpu"):
    """A `transformers` ``VitPoseForPoseEstimation`` holding the weights of a ViTPose ONNX export.

    The graph is read by structure, not by names: op types, constant shapes and order give the patch
    embedding, position embedding, the blocks (LayerNorm, qkv, proj, LayerNorm, fc1, fc2; MatMul weights are
    stored transposed; LayerNorm as one op or decomposed), the final LayerNorm and the deconvolution head
    (with BatchNorm separate or folded). Sizes (width, depth, heads, keypoints) come from the graph. Every
    parameter and running statistic of the torch model must get exactly one source of the right shape.

    Args:
        onnx_path: The ``.onnx`` file; external weight files are read from its folder.
        device: Where the model's weights are placed (read one tensor at a time, never two copies).

    Returns:
        The model on ``device`` in eval mode, float32.

    Raises:
        UnsupportedPoseGraph: The graph is not that layout (use ``backend="onnxruntime"`` then).
    """
    import onnx
    from transformers import VitPoseForPoseEstimation

    try:
        model_proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as error:  # a truncated or foreign file
        raise WanAnimateError(f"Could not read the pose model {onnx_path} ({error}). Download it again.") from error
    graph = _OnnxGraph(model_proto, onnx_path.parent)
    image_size = _input_size(graph)
    config, sources = _vitpose_sources(_graph_layers(graph), image_size)

    with torch.device("meta"):
        model = VitPoseForPoseEstimation(config)
    expected = {
        key: tuple(value.shape) for key, value in model.state_dict().items() if not key.endswith("num_batches_tracked")
    }
    problems = [f"{key}: no source" for key in expected if key not in sources]
    problems += [f"{key}: not in the torch model" for key in sources if key not in expected]
    problems += [
        f"{key}: {len(found)} sources ({'; '.join(tensor.origin for tensor in found)})"
        for key, found in sources.items()
        if len(found) != 1
    ]
    problems += [
        f"{key}: shape {found[0].shape} from {found[0].origin}, the model needs {expected[key]}"
        for key, found in sources.items()
        if key in expected and len(found) == 1 and tuple(found[0].shape) != expected[key]
    ]
    if problems:
        raise UnsupportedPoseGraph("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))

    model = model.to_empty(device=device)
    state = model.state_dict()
    with torch.no_grad():
        for key, target in state.items():
            if key.endswith("num_batches_tracked"):
                target.zero_()
                continue
            target.copy_(torch.from_numpy(np.array(sources[key][0].load(), dtype=np.float32)))
    return model.eval()


def _input_size(graph: _OnnxGraph) -> tuple[int, int]:
    """(height, width) of the first graph input where it is fixed, else ViTPose's 256 x 192."""
    initializer_names = set(graph.initializers)
    model_input = next((item for item in graph.inputs if item.name not in initializer_names), None)
    if model_input is None:
        return INPUT_SIZE
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in model_input.type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[2] and dims[3]:
        if (dims[2], dims[3]) != INPUT_SIZE:
            raise UnsupportedPoseGraph(f"the model input is {dims[2]} x {dims[3]}, not {INPUT_SIZE[0]} x {INPUT_SIZE[1]}")
        return dims[2], dims[3]
    return INPUT_SIZE
