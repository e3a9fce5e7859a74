"""AOGNet modules: node operations, AOG blocks, stages and the network.

Layout (four stages after a stem; strides 4, 8, 16, 32)::

    stem      3x3 conv s2 (C0/2) -> 3x3 conv (C0/2) -> 3x3 conv (C0), each BN + ReLU; 2x2 max-pool
    stage s   [transition: 1x1 conv-BN-ReLU, 2x2 avg-pool, when the stage has stride 2]
              AOG block x blocks[s], widening from C_s to C_{s+1} in equal steps
    head      global average pool, ``fc`` (classifier mode only)

An AOG block computes every node of its grammar (:mod:`.grammar`) with its own node
operation, a residual bottleneck 1x1 -> 3x3 -> 1x1 of width out/4 (at least 4), and returns
the root's output after one more BN + ReLU. The node of a segment of w of the N primitives
outputs w/N of the block's output channels. What a node operation gets:

* Terminal node: its slice of the block input (its segment's share of the input channels).
* And node: its parts' outputs concatenated in child order; Or node: the sum of its
  alternatives' outputs.
* Double counting: when a child lies on more (or fewer) syntactic paths from the root than
  its parent, the *residual* input takes that child's output scaled by
  ``parent.num_paths / child.num_paths`` while the bottleneck input stays unscaled.
* Lateral child (sibling of equal width): added to the bottleneck input; added to the residual
  input too unless parent and sibling already share a parent (whose sum includes the sibling).

Module names keep the grammar's node ids: ``stages.{s}.blocks.{b}.nodes.{id}.conv1`` etc.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...layers import AttentiveBatchNorm2d, build_norm
from ..base import Backbone
from .configs import AOGNetConfig
from .grammar import AndOrGraph, NodeType, build_aog, channel_bounds

__all__ = ["ConvNormAct", "NodeOp", "AOGBlock", "AOGStage", "AOGNet"]


def _round_half_up(x: float) -> int:
    # The reference rounds the bottleneck width half up (Python's round() would round to even).
    return int(x) + (1 if x - int(x) >= 0.5 else 0)


class ConvNormAct(nn.Module):
    """conv (no bias) -> BatchNorm -> optional ReLU."""

    #: (conv, the norm that follows it): BatchNorms that inference folds (anzoo.models.layers.fold)
    CONV_NORM_PAIRS = (("conv", "norm"),)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=False)
        self.norm = build_norm("bn", out_channels)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class NodeOp(nn.Module):
    """Residual bottleneck of one AOG node.

    ``forward(x, residual)`` adds ``residual`` (default ``x``; through a 1x1 conv-BN when the
    widths differ) to 1x1-BN-ReLU -> 3x3-norm-ReLU -> 1x1-BN[-Dropout2d], then applies ReLU.
    ``mid_norm`` is the 3x3 conv's norm ('bn' or 'an' with ``k`` components).
    """

    #: (conv, the norm that follows it): BatchNorms that inference folds (anzoo.models.layers.fold)
    CONV_NORM_PAIRS = (("conv1", "norm1"), ("conv2", "norm2"), ("conv3", "norm3"))

    def __init__(self, in_channels: int, out_channels: int, *, mid_norm: str = "bn",
                 k: int | None = None, drop_rate: float = 0.0, bottleneck_ratio: float = 0.25) -> None:
        super().__init__()
        mid = max(4, _round_half_up(out_channels * bottleneck_ratio))
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.norm1 = build_norm("bn", mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.norm2 = build_norm(mid_norm, mid, k=k)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.norm3 = build_norm("bn", out_channels)
        self.drop = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.shortcut = (ConvNormAct(in_channels, out_channels, 1, act=False)
                         if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        identity = x if residual is None else residual
        if self.shortcut is not None:
            identity = self.shortcut(identity)
        out = self.act(self.norm1(self.conv1(x)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.drop(self.norm3(self.conv3(out)))
        return self.act(out + identity)


@dataclass(frozen=True)
class _Step:
    """How a block computes one node (precomputed from the graph)."""

    node_id: int
    node_type: NodeType
    #: Terminal nodes: the input channels they read.
    in_slice: tuple[int, int] = (0, 0)
    #: And parts / Or alternatives with the residual scale of each (parent/child path counts).
    children: tuple[tuple[int, float], ...] = ()
    #: Lateral siblings added to both inputs, then those added to the bottleneck input only.
    laterals_both: tuple[int, ...] = ()
    laterals_op_only: tuple[int, ...] = ()


def _plan(graph: AndOrGraph, in_bounds: Sequence[int]) -> list[_Step]:
    steps = []
    for i in graph.order:
        node = graph.nodes[i]
        if node.type == NodeType.TERMINAL:
            steps.append(_Step(i, node.type, in_slice=(in_bounds[node.start], in_bounds[node.end + 1])))
            continue
        children = tuple((c, node.num_paths / graph.nodes[c].num_paths) for c in graph.syntactic_children(i))
        laterals = graph.lateral_children(i)
        steps.append(_Step(
            i, node.type, children=children,
            laterals_both=tuple(c for c in laterals if not graph.shares_parent(i, c)),
            laterals_op_only=tuple(c for c in laterals if graph.shares_parent(i, c)),
        ))
    return steps


def _combine(node_type: NodeType, tensors: list[torch.Tensor]) -> torch.Tensor:
    if node_type == NodeType.AND:
        return torch.cat(tensors, dim=1)
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


class AOGBlock(nn.Module):
    """One AOG building block: ``in_channels`` -> ``out_channels`` at the same resolution."""

    def __init__(self, graph: AndOrGraph, in_channels: int, out_channels: int, *, norm: str = "bn",
                 k: int | None = None, drop_rate: float = 0.0, bottleneck_ratio: float = 0.25) -> None:
        super().__init__()
        self.graph = graph
        self.in_channels, self.out_channels = in_channels, out_channels
        n = graph.num_primitives
        in_bounds, out_bounds = channel_bounds(in_channels, n), channel_bounds(out_channels, n)
        self.nodes = nn.ModuleDict()
        for i in graph.order:
            node = graph.nodes[i]
            width = out_bounds[node.end + 1] - out_bounds[node.start]
            cin = in_bounds[node.end + 1] - in_bounds[node.start] if node.type == NodeType.TERMINAL else width
            # AN only where a node spans the whole block, as in the released models.
            spans_all = node.width == n
            self.nodes[str(i)] = NodeOp(cin, width, mid_norm=norm if spans_all else "bn",
                                        k=k if spans_all and norm == "an" else None,
                                        drop_rate=drop_rate, bottleneck_ratio=bottleneck_ratio)
        self.out_norm = build_norm("bn", out_channels)
        self.out_act = nn.ReLU(inplace=True)
        self._steps = _plan(graph, in_bounds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: dict[int, torch.Tensor] = {}
        for step in self._steps:
            op = self.nodes[str(step.node_id)]
            if step.node_type == NodeType.TERMINAL:
                start, end = step.in_slice
                # A channel slice is not contiguous; CPU convolutions on it take a slow path.
                outputs[step.node_id] = op(x[:, start:end].contiguous())
                continue
            parts = [outputs[c] for c, _ in step.children]
            op_in = _combine(step.node_type, parts)
            if any(scale != 1.0 for _, scale in step.children):
                res_in = _combine(step.node_type, [t if s == 1.0 else t * s
                                                   for t, (_, s) in zip(parts, step.children)])
            else:
                res_in = op_in
            for c in step.laterals_both:
                if res_in is op_in:
                    op_in = res_in = op_in + outputs[c]
                else:
                    op_in, res_in = op_in + outputs[c], res_in + outputs[c]
            for c in step.laterals_op_only:
                op_in = op_in + outputs[c]
            outputs[step.node_id] = op(op_in, res_in)
        return self.out_act(self.out_norm(outputs[self.graph.root]))

    def extra_repr(self) -> str:
        g = self.graph
        return (f"{self.in_channels}, {self.out_channels}, primitives={g.num_primitives}, "
                f"nodes(T/A/O)={g.count(NodeType.TERMINAL)}/{g.count(NodeType.AND)}/{g.count(NodeType.OR)}")


class Transition(nn.Module):
    """Downsampling before a stage's first block: 1x1 conv-BN-ReLU, then average pooling."""

    #: (conv, the norm that follows it): BatchNorms that inference folds (anzoo.models.layers.fold)
    CONV_NORM_PAIRS = (("conv", "norm"),)

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm = build_norm("bn", channels)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class AOGStage(nn.Module):
    def __init__(self, graph: AndOrGraph, block_channels: Sequence[tuple[int, int]], stride: int, *,
                 norm: str, k: int, drop_rate: float, bottleneck_ratio: float) -> None:
        super().__init__()
        self.transition = Transition(block_channels[0][0], stride) if stride > 1 else None
        self.blocks = nn.Sequential(*[
            AOGBlock(graph, cin, cout, norm=norm, k=k, drop_rate=drop_rate, bottleneck_ratio=bottleneck_ratio)
            for cin, cout in block_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transition is not None:
            x = self.transition(x)
        return self.blocks(x)


class AOGNet(Backbone):
    """AOGNet of :class:`AOGNetConfig`.

    Args:
        config: one of :data:`.configs.CONFIGS`.
        num_classes: None for a detection backbone (forward returns ``{'c2','c3','c4','c5'}``
            at strides 4, 8, 16, 32); otherwise a classifier returning logits.
        frozen_stages: -1 none, 0 the stem, n the stem and the first n stages.
        norm_eval: keep every BatchNorm (AN's included) in eval mode while training.
    """

    def __init__(self, config: AOGNetConfig, num_classes: int | None = None, *,
                 frozen_stages: int = -1, norm_eval: bool = False) -> None:
        super().__init__()
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        if config.norm not in ("bn", "an"):
            raise ValueError(f"AOGNet norm must be 'bn' or 'an', got {config.norm!r}")
        self.config = config
        self.num_classes = num_classes
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        c0 = config.channels[0]
        self.stem = nn.Sequential(
            ConvNormAct(3, c0 // 2, 3, stride=2),
            ConvNormAct(c0 // 2, c0 // 2, 3),
            ConvNormAct(c0 // 2, c0, 3),
            nn.MaxPool2d(2, 2),
        )
        self.graphs = tuple(build_aog(n, rule) for n, rule in zip(config.primitives, config.split_rules))
        self.stages = nn.ModuleList(
            AOGStage(self.graphs[s], config.block_channels(s), config.strides[s], norm=config.norm,
                     k=config.an_k[s], drop_rate=config.drop_rates[s],
                     bottleneck_ratio=config.bottleneck_ratio)
            for s in range(4))
        self.out_channels: list[int] = list(config.channels[1:])
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(config.channels[-1], num_classes)

        self._init_weights()
        self.train()  # applies frozen_stages and norm_eval

    def _init_weights(self) -> None:
        # As AOGNet-v2: He init (fan_out) for every conv, the attention's included; BatchNorm
        # at gamma 1, beta 0; AN mixtures keep their N(1, 0.1) / N(0, 0.1) init; fc default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, AttentiveBatchNorm2d):
                m.reset_parameters()

    def stage_modules(self) -> list[nn.Module]:
        return [self.stem, *self.stages]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        features = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            features[f"c{i + 2}"] = x
        return features

