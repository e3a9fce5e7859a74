"""The And-Or graph (AOG) inside an AOGNet building block.

AOGNet (Li, Song, Wu: "AOGNets: Compositional Grammatical Architectures for Deep Learning",
CVPR 2019, arXiv:1711.05847) builds each block from a grammar over its *channels*. The C
input channels are cut into N equal groups, the *primitives*, laid on a line (a 1 x N grid);
a *segment* ``[start, end]`` is a run of consecutive primitives. Three node types explain a
segment:

* **Terminal** (T): the segment's channels of the block input, taken as they are.
* **And** (A): a binary split of the segment into a left and a right sub-segment; it
  concatenates (along channels) the outputs of the Or nodes of the two parts.
* **Or** (O): the alternative explanations of the segment, its Terminal node and its And
  nodes; it sums their outputs.

The root is the Or node of the whole line. Unfolding is breadth-first from the root, every node
being created once (an Or node is shared by all And nodes that need its segment, which makes
the graph a DAG): an Or node, when taken from the queue, gets a new Terminal node, then one And
node per kept split; an And node gets the Or nodes of its two parts. Node ids are creation
order, which the released weights' key names encode.

Symmetric splits: a split of w primitives into (l, w - l) mirrors (w - l, l). The AOGNet-v2
configs keep one of each pair ("remove symmetric children of Or nodes"): ``"shorter_left"``
scans l = 1, 2, ... and keeps l <= w - l (yaml value 1, "keep left"); ``"longer_left"`` scans
l = w - 1, w - 2, ... and keeps l >= w - l (yaml value 2, "keep right"). The scan order is also
the order in which the And nodes are created.

Lateral connections (the paper's "node lateral connections", yaml ``extra_node_hierarchy: 4``):
after unfolding, siblings of equal width are chained. Nodes of one type and one width are
sorted left to right (And nodes by the end of their left part, then by start); And nodes
point to the next one in that order, Or nodes to the previous one. A width with a single node
of that type flips the direction for the next width that has several. A lateral edge always
joins two nodes of the same type; the other edges are *syntactic* (Or -> T, Or -> A of the
same segment; A -> O of a part).

Path counts ("double counting"): a node reachable from the root along several syntactic paths
(e.g. the Or node of primitive 0 in a 4-wide block lies under the splits 1|3 and 2|2) would
have its input counted several times in the block's residual sums. ``num_paths`` counts these
paths; a parent scales a child's contribution to its residual input by
``parent.num_paths / child.num_paths``.

Child order: the reference implementation passed every node's list of children through
``list(set(children))`` before use, so the order is CPython's iteration order of a small set of
ints, not creation order (e.g. children created as [15, 7] come out as [7, 15]). The order
decides the channel order of every And node's concatenation, so the released weights depend on
it. For the released models' 2- and 4-primitive grammars the set order happens to be
ascending id order, which is still not left-to-right order (in the 4-primitive grammars one
And node concatenates its right part first); from 5 primitives on it is neither.
:func:`cpython_set_order` reproduces that order explicitly (no reliance on the running
interpreter's set implementation); tests check it against the real ``set`` and freeze the
resulting graphs. The order of parent lists, which the reference also took through sets, does
not matter: only the *size* of the intersection of two nodes' parent sets is used.
"""
from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["NodeType", "Node", "AndOrGraph", "build_aog", "cpython_set_order", "SplitRule"]

SplitRule = Literal["shorter_left", "longer_left"]


class NodeType(str, enum.Enum):
    TERMINAL = "T"
    AND = "A"
    OR = "O"


@dataclass
class Node:
    """One node of the graph; ``start``/``end`` are inclusive primitive indices."""

    id: int
    type: NodeType
    start: int
    end: int
    #: And nodes: primitives in the left part.
    split: int = 0
    #: In the reference's order (see the module docstring); lateral children come last.
    children: list[int] = field(default_factory=list)
    parents: frozenset[int] = frozenset()
    #: Syntactic paths from the root to this node (1 for the root).
    num_paths: int = 0

    @property
    def width(self) -> int:
        return self.end - self.start + 1

    def describe(self) -> str:
        """Compact text form, e.g. ``10:A[1,3](7,15)``."""
        kids = f"({','.join(map(str, self.children))})" if self.children else ""
        return f"{self.id}:{self.type.value}[{self.start},{self.end}]{kids}"


@dataclass(frozen=True)
class AndOrGraph:
    """An unfolded AOG over ``num_primitives`` primitives. The root is node 0."""

    num_primitives: int
    nodes: tuple[Node, ...]
    #: Post-order depth-first traversal from the root (children before parents), the order
    #: in which a block computes its nodes and registers their modules.
    order: tuple[int, ...]
    root: int = 0

    def is_lateral(self, parent: int, child: int) -> bool:
        return self.nodes[parent].type == self.nodes[child].type

    def syntactic_children(self, node_id: int) -> list[int]:
        """An And node's parts or an Or node's alternatives, in child order."""
        return [c for c in self.nodes[node_id].children if not self.is_lateral(node_id, c)]

    def lateral_children(self, node_id: int) -> list[int]:
        return [c for c in self.nodes[node_id].children if self.is_lateral(node_id, c)]

    def shares_parent(self, a: int, b: int) -> bool:
        """Whether some node is a parent of both ``a`` and ``b``."""
        return bool(self.nodes[a].parents & self.nodes[b].parents)

    def count(self, node_type: NodeType) -> int:
        return sum(1 for n in self.nodes if n.type == node_type)

    def describe(self) -> str:
        """The numbering and child orders in one line (``id:type[start,end](children)``)."""
        return " ".join(n.describe() for n in self.nodes)


def cpython_set_order(ids: Iterable[int]) -> list[int]:
    """The order in which CPython iterates ``set(ids)`` for at most 4 distinct small ints.

    A new set has 8 slots and grows only when a fifth member arrives, so up to 4 members stay
    in those 8 slots. An int hashes to itself; member i goes to slot i % 8 and, if that slot
    is taken, follows CPython's probe sequence ``slot = (5 * slot + 1 + perturb) % 8`` with
    ``perturb`` starting at i and shifted right by 5 before each step. Iteration reads the
    slots in index order.
    """
    table: list[int | None] = [None] * 8
    members = 0
    for value in ids:
        if value < 0:
            raise ValueError(f"node ids are non-negative, got {value}")
        slot, perturb = value & 7, value
        while table[slot] is not None and table[slot] != value:
            perturb >>= 5
            slot = (slot * 5 + 1 + perturb) & 7
        if table[slot] is None:
            members += 1
            if members > 4:
                raise ValueError("cpython_set_order models sets of at most 4 members")
            table[slot] = value
    return [v for v in table if v is not None]


def _kept_splits(width: int, rule: SplitRule) -> list[int]:
    """Left-part sizes of the And nodes of a segment of ``width`` primitives, in creation order."""
    if rule == "shorter_left":
        return [left for left in range(1, width) if left <= width - left]
    if rule == "longer_left":
        return [left for left in range(width - 1, 0, -1) if left >= width - left]
    raise ValueError(f"unknown split rule {rule!r}; expected 'shorter_left' or 'longer_left'")


class _Builder:
    def __init__(self, num_primitives: int, rule: SplitRule) -> None:
        self.num_primitives = num_primitives
        self.rule = rule
        self.nodes: list[Node] = []
        self._or_of_segment: dict[tuple[int, int], int] = {}

    def _new(self, node_type: NodeType, start: int, end: int, split: int = 0) -> Node:
        node = Node(len(self.nodes), node_type, start, end, split)
        self.nodes.append(node)
        return node

    def _or_node(self, start: int, end: int, queue: deque[int]) -> int:
        """The Or node of a segment, created (and queued) on first use."""
        key = (start, end)
        if key not in self._or_of_segment:
            node = self._new(NodeType.OR, start, end)
            self._or_of_segment[key] = node.id
            queue.append(node.id)
        return self._or_of_segment[key]

    def unfold(self) -> None:
        queue: deque[int] = deque()
        self._or_node(0, self.num_primitives - 1, queue)
        while queue:
            node = self.nodes[queue.popleft()]
            created: list[int] = []
            if node.type == NodeType.OR:
                created.append(self._new(NodeType.TERMINAL, node.start, node.end).id)
                for left in _kept_splits(node.width, self.rule):
                    and_node = self._new(NodeType.AND, node.start, node.end, split=left)
                    queue.append(and_node.id)
                    created.append(and_node.id)
            else:  # And node: the Or nodes of its two parts
                middle = node.start + node.split
                created.append(self._or_node(node.start, middle - 1, queue))
                created.append(self._or_node(middle, node.end, queue))
            node.children = cpython_set_order(created)

    def add_lateral_edges(self, node_type: NodeType, direction: Literal["next", "previous"]) -> None:
        of_type = [n for n in self.nodes if n.type == node_type]
        flip = False
        for width in sorted({n.width for n in of_type}):
            group = [n for n in of_type if n.width == width]
            if len(group) < 2:
                flip = True
                continue
            this_direction = direction
            if flip:
                this_direction = "previous" if direction == "next" else "next"
                flip = False
            if node_type == NodeType.AND:
                group.sort(key=lambda n: (n.start + n.split - 1, n.start))
            else:
                group.sort(key=lambda n: n.start)
            for i, node in enumerate(group):
                j = i + 1 if this_direction == "next" else i - 1
                if 0 <= j < len(group) and group[j].id not in node.children:
                    node.children.append(group[j].id)

    def post_order(self, root: int) -> list[int]:
        order: list[int] = []
        state = [0] * len(self.nodes)  # 0 new, 1 on the path, 2 done

        def visit(i: int) -> None:
            state[i] = 1
            for c in self.nodes[i].children:
                if state[c] == 1:
                    raise RuntimeError(f"the AOG has a cycle through node {c}")
                if state[c] == 0:
                    visit(c)
            state[i] = 2
            order.append(i)

        visit(root)
        if len(order) != len(self.nodes):
            raise RuntimeError("some AOG nodes are not reachable from the root")
        return order

    def finish(self, root: int = 0) -> AndOrGraph:
        parents: list[set[int]] = [set() for _ in self.nodes]
        for node in self.nodes:
            for c in node.children:
                parents[c].add(node.id)
        for node, ps in zip(self.nodes, parents):
            node.parents = frozenset(ps)
        order = self.post_order(root)
        # Count syntactic paths top-down: reversed post-order visits parents before children.
        self.nodes[root].num_paths = 1
        for i in reversed(order):
            node = self.nodes[i]
            for c in node.children:
                if self.nodes[c].type != node.type:
                    self.nodes[c].num_paths += node.num_paths
        return AndOrGraph(self.num_primitives, tuple(self.nodes), tuple(order), root)


def build_aog(num_primitives: int, split_rule: SplitRule = "shorter_left") -> AndOrGraph:
    """The AOG of a block whose channels are cut into ``num_primitives`` groups, with binary
    splits (max split 2), one of each pair of symmetric splits kept per ``split_rule``, and
    lateral connections between same-width siblings."""
    if not 1 <= num_primitives <= 7:
        # Wider grammars give an Or node more than 4 children (see cpython_set_order).
        raise ValueError(f"num_primitives must be in 1..7, got {num_primitives}")
    builder = _Builder(num_primitives, split_rule)
    builder.unfold()
    builder.add_lateral_edges(NodeType.AND, "next")
    builder.add_lateral_edges(NodeType.OR, "previous")
    return builder.finish()


def channel_bounds(channels: int, num_primitives: int) -> Sequence[int]:
    """Channel index where each primitive starts, plus ``channels`` at the end."""
    if channels % num_primitives:
        raise ValueError(f"{channels} channels do not split into {num_primitives} equal groups")
    step = channels // num_primitives
    return [i * step for i in range(num_primitives + 1)]
