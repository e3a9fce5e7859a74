"""The registry: zoo.yaml against the authors' results table, schema checks, ANZOO_ZOO."""
from __future__ import annotations

import dataclasses
import html.parser
import json
import re
from pathlib import Path

import pytest

import anzoo
from anzoo import zoo
from anzoo.errors import UnknownModelError, ZooSchemaError
from helpers.zoo_rows import EXPECTED_IDS
from anzoo.schema import (BACKBONE_NAMES, Backbone, BackboneNorm, Detector, HeadNorm, ZooEntry, entry_field,
                          parse_entry)

# The two result tables of the AttentiveNorm_Detection README (Mask R-CNN, then Cascade
# Mask R-CNN), kept here as data so the test does not depend on a checkout of that repo.
SEED_TABLES = """
<table>
  <tr><th>Architecture</th><th>Backbone</th><th>Head</th><th>#Params</th><th>box AP</th><th>mask AP</th><th>Download</th></tr>
  <tr><td rowspan="5">ResNet-50</td><td>BN</td><td>-</td><td>45.71M</td><td>39.2</td><td>35.2</td><td><a href="https://drive.google.com/open?id=1m6_-5ri-ZcVtcrazAIXaPr_0y8KSx42p">Google Drive</a></td></tr>
  <tr><td>AN (w/ BN)</td><td>-</td><td>45.91M</td><td>40.8</td><td>36.4</td><td><a href="https://drive.google.com/open?id=12bAq3OhZ-jnv_jGNsVb4TsFhzzueDCDh">Google Drive</a></td></tr>
  <tr><td>*GN</td><td>GN</td><td>45.72M</td><td>40.3</td><td>35.7</td><td>-</td></tr>
  <tr><td>*SN</td><td>SN</td><td>-</td><td>41.0</td><td>36.5</td><td>-</td></tr>
  <tr><td>AN (w/ BN)</td><td>AN (w/ GN)</td><td>45.96M</td><td>41.6</td><td>37.4</td><td><a href="https://drive.google.com/open?id=1pFrwDMERNAnvHZw73fdHqa400-ou-BW9">Google Drive</a></td></tr>
  <tr><td rowspan="4">ResNet-101</td><td>BN</td><td>-</td><td>64.70M</td><td>41.4</td><td>36.8</td><td><a href="https://drive.google.com/open?id=1xWEsfHiwZp_INCvygJMNy6amESVmXqRn">Google Drive</a></td></tr>
  <tr><td>AN (w/ BN)</td><td>-</td><td>65.15M</td><td>43.1</td><td>38.2</td><td><a href="https://drive.google.com/open?id=1A9Dp_DMbMu7j4D6Xl9Ej7Q6_SbkdCs3f">Google Drive</a></td></tr>
  <tr><td>*GN</td><td>GN</td><td>64.71M</td><td>41.8</td><td>36.8</td><td>-</td></tr>
  <tr><td>AN (w/ BN)</td><td>AN (w/ GN)</td><td>65.20M</td><td>43.2</td><td>38.8</td><td><a href="https://drive.google.com/open?id=1ySGHIuYDlcPxlXlsNzwqgF_kDjDbetSK">Google Drive</a></td></tr>
  <tr><td rowspan="3">AOGNet-12m</td><td>BN</td><td>-</td><td>33.09M</td><td>40.7</td><td>36.4</td><td><a href="https://drive.google.com/open?id=1zwFvFH2h6jNgrwSW5x47zj1k1VAEcJUt">Google Drive</a></td></tr>
  <tr><td>AN (w/ BN)</td><td>-</td><td>33.21M</td><td>42.0</td><td>37.8</td><td><a href="https://drive.google.com/open?id=1DfDd0D81TV3JpKbGkX_X5stk1bVdF5GR">Google Drive</a></td></tr>
  <tr><td>AN (w/ BN)</td><td>AN (w/ GN)</td><td>33.26M</td><td>43.0</td><td>38.7</td><td><a href="https://drive.google.com/open?id=1s_WO4O9hBjYMLHRffcCo8Qb0xt1_3ifR">Google Drive</a></td></tr>
  <tr><td rowspan="3">AOGNet-40m</td><td>BN</td><td>-</td><td>60.73M</td><td>43.4</td><td>38.5</td><td><a href="https://drive.google.com/open?id=1LIZDL22XcaUlPAKdQkPa8INB9zTTtrNj">Google Drive</a></td></tr>
  <tr><td>AN (w/ BN)</td><td>-</td><td>60.97M</td><td>44.1</td><td>39.0</td><td><a href="https://drive.google.com/open?id=1XvRgjqCxBE5iiDcm-s10piMPuaglQrSa">Google Drive</a></td></tr>
  <tr><td>AN (w/ BN)</td><td>AN (w/ GN)</td><td>61.02M</td><td>44.9</td><td>40.2</td><td><a href="https://drive.google.com/open?id=1QbVVHi_bE_tEIR0H8u-1FXa2jCzN7GvA">Google Drive</a></td></tr>
</table>
<table>
  <tr><th>Architecture</th><th>Backbone</th><th>Head</th><th>#Params</th><th>box AP</th><th>mask AP</th><th>Download</th></tr>
  <tr><td rowspan="2">ResNet-101</td><td>BN</td><td>-</td><td>96.32M</td><td>44.4</td><td>38.2</td><td><a href="https://drive.google.com/open?id=1OxMfuXEmJJTMS2LgA8at54KqYo3lrPGr">Google Drive</a></td></tr>
  <tr><td>AN (w/ BN)</td><td>-</td><td>96.77M</td><td>45.8</td><td>39.6</td><td><a href="https://drive.google.com/open?id=1J69Rg9Dl5tl3xoVljSMYZzzpouHDJ3Ty">Google Drive</a></td></tr>
  <tr><td rowspan="2">AOGNet-40m</td><td>BN</td><td>-</td><td>92.35M</td><td>45.6</td><td>39.3</td><td><a href="https://drive.google.com/open?id=19pyLHeFR_DQuWIS15VopV8wF6KJv9dQM">Google Drive</a></td></tr>
  <tr><td>AN (w/ BN)</td><td>-</td><td>92.58M</td><td>46.5</td><td>40.0</td><td><a href="https://drive.google.com/open?id=1BC99jyKxeX5vB1fBqhIPFvBbP4YlEk9f">Google Drive</a></td></tr>
</table>
"""



class _TableRows(html.parser.HTMLParser):
    """Rows of HTML tables as (table index, [cell text], [link href]), with rowspans filled in."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, list[str], list[str]]] = []
        self.table = -1
        self._cells: list[str] | None = None
        self._links: list[str] = []
        self._text: list[str] | None = None
        self._spans: dict[int, tuple[str, int]] = {}  # column -> (text, rows left)
        self._span_next = 1

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table += 1
        elif tag == "tr":
            self._cells, self._links = [], []
        elif tag == "td":
            self._text = []
            self._span_next = int(attrs.get("rowspan", 1))
        elif tag == "a" and self._cells is not None:
            self._links.append(attrs["href"])

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cells is not None:
            # Columns covered by a rowspan from above come first.
            while len(self._cells) in self._spans:
                self._take_span(len(self._cells))
            text = "".join(self._text).strip()
            if self._span_next > 1:
                self._spans[len(self._cells)] = (text, self._span_next - 1)
            self._cells.append(text)
            self._text = None
        elif tag == "tr" and self._cells:
            self.rows.append((self.table, self._cells, self._links))
            self._cells = None

    def _take_span(self, col):
        text, left = self._spans.pop(col)
        if left > 1:
            self._spans[col] = (text, left - 1)
        self._cells.append(text)


def seed_rows():
    parser = _TableRows()
    parser.feed(SEED_TABLES)
    return parser.rows


ARCH = {"ResNet-50": "resnet50", "ResNet-101": "resnet101", "AOGNet-12m": "aognet12m",
        "AOGNet-40m": "aognet40m"}
BACKBONE_NORM = {"BN": "bn", "AN (w/ BN)": "an", "*GN": "gn", "*SN": "sn"}
HEAD = {"-": "none", "GN": "gn", "SN": "sn", "AN (w/ GN)": "an_gn"}


def test_zoo_matches_every_number_of_the_seed_table():
    rows = seed_rows()
    entries = zoo.list_entries()
    assert len(rows) == len(entries) == 19
    for (table, cells, links), entry in zip(rows, entries):
        arch, norm, head, params, box, mask, _download = cells
        assert entry.detector == ("mask_rcnn" if table == 0 else "cascade_mask_rcnn"), entry.id
        assert entry.backbone == ARCH[arch], entry.id
        assert entry.backbone_norm == BACKBONE_NORM[norm], entry.id
        assert entry.head_norm == HEAD[head], entry.id
        assert entry.params_m == (None if params == "-" else float(params.rstrip("M"))), entry.id
        assert f"{entry.params_m:.2f}M" == params if entry.params_m is not None else params == "-"
        assert entry.box_ap == float(box), entry.id
        assert entry.mask_ap == float(mask), entry.id
        if links:
            assert entry.weights is not None and entry.weights.manual_url == links[0], entry.id
            assert links[0] == f"https://drive.google.com/open?id={entry.weights.gdrive_id}"
        else:  # the starred rows: numbers from the GN / SN papers, nothing to download
            assert norm.startswith("*")
            assert entry.weights is None and not entry.has_weights, entry.id
            assert "no weights were released" in entry.notes, entry.id


def test_ids_order_and_default():
    assert zoo.list_models() == EXPECTED_IDS
    assert anzoo.list_models() == EXPECTED_IDS
    assert zoo.DEFAULT_MODEL == anzoo.DEFAULT_MODEL == "aognet40m-an-gn"
    assert zoo.DEFAULT_MODEL in EXPECTED_IDS
    assert anzoo.list_models("*-an-gn") == ["r50-an-gn", "r101-an-gn", "aognet12m-an-gn", "aognet40m-an-gn"]
    assert anzoo.list_models("cascade-*") == EXPECTED_IDS[-4:]
    assert anzoo.list_models("nothing*") == []


def test_schedules_configs_and_pretrained_backbones():
    for e in zoo.list_entries():
        assert e.schedule == ("20e" if e.detector == "cascade_mask_rcnn" else "2x"), e.id
        assert e.num_classes == 80 and e.class_names is None
        if e.backbone_norm in ("gn", "sn"):
            assert e.pretrained_backbone is None and e.config is None, e.id
        else:
            # training starts from the ImageNet backbone of the same architecture and norm
            assert e.pretrained_backbone == e.backbone_id, e.id
            assert zoo.get_backbone_entry(e.pretrained_backbone).arch == e.backbone
            assert re.fullmatch(r"configs/attn_norm/[a-z0-9_]+_(2x|20e)\.py", e.config), e.id
            assert e.config.endswith(f"_{e.schedule}.py")
        assert e.papers, e.id
    assert zoo.get_entry("aognet40m-an-gn").config == \
        "configs/attn_norm/mask_rcnn_aognet_40m_an_conv_head_attn_gn_fpn_2x.py"
    assert zoo.get_entry("cascade-r101-bn").config == "configs/attn_norm/cascade_mask_rcnn_r101_bn_fpn_20e.py"


def test_backbone_ids():
    expected = {"r50-bn": "r50-bn", "r50-an-gn": "r50-an", "r101-gn": "r101-gn", "r50-sn": "r50-sn",
                "aognet40m-bn": "aognet40m-bn", "aognet12m-an-gn": "aognet12m-an",
                "cascade-aognet40m-an": "aognet40m-an", "cascade-r101-bn": "r101-bn"}
    for model_id, backbone_id in expected.items():
        assert zoo.get_entry(model_id).backbone_id == backbone_id


def test_papers():
    papers = zoo.load_zoo().papers
    assert papers["aognets"].link == "https://arxiv.org/abs/1711.05847"
    assert papers["aognets"].venue == "CVPR 2019"
    assert papers["attentive_norm"].link == "https://arxiv.org/abs/1908.01259"
    assert [p.key for p in zoo.get_entry("aognet40m-an-gn").papers] == ["aognets", "attentive_norm", "mask_rcnn"]
    assert [p.key for p in zoo.get_entry("r50-gn").papers][0] == "group_norm"
    assert [p.key for p in zoo.get_entry("r50-sn").papers][0] == "switchable_norm"


# The ImageNet backbones of the AOGNet-v2 README (normal training setup).
EXPECTED_BACKBONES = [
    # id, Drive id, #params (M), top-1 error, top-5 error
    ("r50-bn", "1NqGbN5XjEWufq-V3WXz0eXJ2HKDL2wGV", 25.56, 23.01, 6.68),
    ("r50-an", "17MNrFTBJS__1cW6PNcLS1lJ7590QyA6m", 25.76, 21.59, 5.88),
    ("r101-bn", "1txeVNkDDKd45dIrJAZyW6Si1UgGvqtXu", 44.57, 21.33, 5.85),
    ("r101-an", "1Cq-D2Gm2QeZW2WqfCrSeqou4AhYqH9yN", 45.00, 20.61, 5.41),
    ("aognet12m-bn", "1PsA2EvEw7wsCGhzp65Lfq3w1pvkU65o0", 12.26, 22.22, 6.06),
    ("aognet12m-an", "1t4Oa0vZuakNfR-PWhMIiOWsVTCZ8Z-G-", 12.37, 21.28, 5.76),
    ("aognet40m-bn", "1u-ToLniZVEkBlbSGQL49A3V72cXS5Dwd", 40.15, 19.84, 4.94),
    ("aognet40m-an", "1LWvdhjxQ259_Gq-YMNT70fAraDGsIWKo", 40.39, 19.33, 4.72),
]


def test_backbones_section():
    entries = zoo.list_backbone_entries()
    assert [(b.id, b.weights.gdrive_id, b.params_m, b.top1_error, b.top5_error) for b in entries] \
        == EXPECTED_BACKBONES
    for b in entries:
        short, norm = b.id.rsplit("-", 1)
        assert zoo.BACKBONE_SHORT_NAMES[b.arch] == short and b.norm == norm
        assert b.config.startswith("configs/") and b.config.endswith("-imagenet.yaml")
    with pytest.raises(UnknownModelError, match="did you mean r50-an"):
        zoo.get_backbone_entry("r50-ann")


def test_unknown_id_suggests_the_closest():
    with pytest.raises(UnknownModelError) as info:
        zoo.get_entry("aognet40m-an-gm")
    message = str(info.value)
    assert message.startswith("unknown model 'aognet40m-an-gm'; did you mean aognet40m-an-gn")
    assert info.value.exit_code == 2
    with pytest.raises(UnknownModelError, match="did you mean aognet40m-"):
        zoo.get_entry("aognet40m")
    with pytest.raises(UnknownModelError, match="run `anzoo list`"):
        zoo.get_entry("zzzzzz")


def test_filters():
    cascade = zoo.list_entries(detector="cascade_mask_rcnn")
    assert [e.id for e in cascade] == EXPECTED_IDS[-4:]
    assert [e.id for e in zoo.list_entries(backbone="r101")] == \
        ["r101-bn", "r101-an", "r101-gn", "r101-an-gn", "cascade-r101-bn", "cascade-r101-an"]
    assert [e.id for e in zoo.list_entries(detector="mask_rcnn", backbone="aognet40m")] == \
        ["aognet40m-bn", "aognet40m-an", "aognet40m-an-gn"]


def test_entries_are_frozen():
    entry = zoo.get_entry("r50-bn")
    with pytest.raises(AttributeError):
        entry.box_ap = 99.0  # type: ignore[misc]


# --------------------------------------------------------------------------- schema errors
_counter = iter(range(10**6))


def _error_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: str) -> str:
    """The ZooSchemaError message for a zoo file holding ``raw`` (the only extra file)."""
    path = tmp_path / f"bad-{next(_counter)}.yaml"
    path.write_text(raw, encoding="utf-8")
    monkeypatch.setenv("ANZOO_ZOO", str(path))
    with pytest.raises(ZooSchemaError) as info:
        zoo.load_zoo()
    return str(info.value)


def test_missing_field_names_entry_and_field(tmp_path, monkeypatch):
    message = _error_for(tmp_path, monkeypatch, """
models:
  - id: my-model
    backbone: resnet50
    backbone_norm: bn
    head_norm: none
    weights: null
""")
    assert re.search(r"bad-\d+\.yaml: entry 'my-model' \(models\[0\]\), field 'detector': missing", message)
    assert "\n" not in message


def test_bad_value_names_entry_field_and_choices(tmp_path, monkeypatch):
    message = _error_for(tmp_path, monkeypatch, """
models:
  - {id: ok-model, detector: mask_rcnn, backbone: resnet50, backbone_norm: bn, head_norm: none, weights: null}
  - {id: my-model, detector: yolo, backbone: resnet50, backbone_norm: bn, head_norm: none, weights: null}
""")
    assert "entry 'my-model' (models[1]), field 'detector': 'yolo' is not one of mask_rcnn, cascade_mask_rcnn" in message


@pytest.mark.parametrize("field, value, expected", [
    ("box_ap", "high", "'box_ap': 'high' is not a number"),
    ("box_ap", 140, "'box_ap': 140 must be between 0 and 100"),
    ("backbone_norm", "ln", "'backbone_norm': 'ln' is not one of bn, an, gn, sn"),
    ("schedule", "forever", "'schedule': 'forever' is not a schedule"),
    ("weights", {"sha256": "abc", "url": "http://x/y"}, "'weights.sha256': 'abc' is not a sha256"),
    ("weights", {"url": "ftp://x/y"}, "'weights.url': 'ftp://x/y' is not an http(s) URL"),
    ("weights", {"sha256": "0" * 64}, "needs at least one of gdrive_id, url, mirrors"),
    ("pretrained_backbone", "r18-bn", "'pretrained_backbone': 'r18-bn' is not in the backbones section"),
    ("papers", ["nope"], "'papers': unknown paper 'nope'"),
    ("box_AP", 40.0, "'box_AP': unknown field (did you mean 'box_ap'?)"),
    ("class_names", ["a", "b"], "'class_names': has 2 names but num_classes is 80"),
])
def test_bad_values(extra_zoo, field, value, expected):
    extra_zoo(models=[{"id": "mine", field: value}])
    with pytest.raises(ZooSchemaError) as info:
        zoo.load_zoo()
    assert "entry 'mine'" in str(info.value)
    assert expected in str(info.value)


def test_duplicate_id_in_one_file(tmp_path, monkeypatch):
    message = _error_for(tmp_path, monkeypatch, """
models:
  - {id: twin, detector: mask_rcnn, backbone: resnet50, backbone_norm: bn, head_norm: none, weights: null}
  - {id: twin, detector: mask_rcnn, backbone: resnet50, backbone_norm: an, head_norm: none, weights: null}
""")
    assert "entry 'twin' (models[1]), field 'id': duplicated id (first defined at models[0])" in message


def test_bad_id_and_bad_yaml(tmp_path, monkeypatch):
    assert "is not a valid id" in _error_for(tmp_path, monkeypatch, "models:\n  - {id: ../evil, weights: null}\n")
    assert "not valid YAML at line 3" in _error_for(tmp_path, monkeypatch, "models:\n  - id: [unclosed\n")
    assert "unknown top-level key 'model'" in _error_for(tmp_path, monkeypatch, "model: []\n")


def test_missing_extra_file(monkeypatch, tmp_path):
    monkeypatch.setenv("ANZOO_ZOO", str(tmp_path / "nope.yaml"))
    with pytest.raises(ZooSchemaError, match="zoo file not found: .*nope.yaml"):
        zoo.get_entry("r50-bn")


def test_builtin_zoo_is_valid_and_shipped():
    path = zoo.builtin_zoo_path()
    assert path.name == "zoo.yaml" and path.parent.name == "anzoo"
    repo_copy = Path(__file__).resolve().parents[2] / "zoo.yaml"
    if repo_copy.exists():  # the repository root's zoo.yaml is the same file
        assert repo_copy.read_bytes() == path.read_bytes()


# --------------------------------------------------------------------------- ANZOO_ZOO
def test_extra_zoo_adds_entries(extra_zoo):
    extra_zoo(models=[{"id": "my-r50", "backbone_norm": "an", "box_ap": 38.0, "num_classes": 2,
                       "class_names": ["cat", "dog"],
                       "weights": {"url": "https://example.org/my-r50.pth", "mirrors": ["https://m.example/x.pth"]}}])
    entry = zoo.get_entry("my-r50")
    assert entry.box_ap == 38.0 and entry.mask_ap is None and entry.schedule is None
    assert entry.num_classes == 2 and entry.class_names == ("cat", "dog")
    assert entry.weights.url == "https://example.org/my-r50.pth"
    assert entry.weights.mirrors == ("https://m.example/x.pth",)
    assert entry.backbone_id == "r50-an"
    assert zoo.list_models()[-1] == "my-r50" and len(zoo.list_models()) == 20
    assert entry.source.endswith("extra-zoo-0.yaml")


def test_extra_zoo_overrides_and_later_files_win(extra_zoo):
    extra_zoo(models=[{"id": "r50-bn", "box_ap": 50.0, "weights": {"url": "https://a.example/r50.pth"}}])
    extra_zoo(models=[{"id": "r50-bn", "box_ap": 51.0, "weights": {"url": "https://b.example/r50.pth"}}],
              backbones=[{"id": "r50-bn", "arch": "resnet50", "norm": "bn", "weights": {"url": "https://b.example/bb.zip"}}])
    entry = zoo.get_entry("r50-bn")
    assert entry.box_ap == 51.0 and entry.weights.url == "https://b.example/r50.pth"
    assert entry.weights.gdrive_id is None  # the whole entry is replaced
    assert zoo.list_models() == EXPECTED_IDS  # keeps its place in the table
    assert zoo.get_backbone_entry("r50-bn").weights.url == "https://b.example/bb.zip"


def test_changes_to_an_extra_file_are_seen(extra_zoo):
    path = extra_zoo(models=[{"id": "mine", "box_ap": 1.0}])
    assert zoo.get_entry("mine").box_ap == 1.0
    path.write_text(path.read_text().replace("box_ap: 1.0", "box_ap: 22.5"))
    assert zoo.get_entry("mine").box_ap == 22.5


# --------------------------------------------------------------------------- README
def test_readme_model_table_matches_zoo():
    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text(encoding="utf-8")
    for e in zoo.list_entries():
        link = f"[Google Drive]({e.weights.manual_url})" if e.weights else "-"
        params = "-" if e.params_m is None else f"{e.params_m:.2f}M"
        cells = [f"`{e.id}`", params, f"{e.box_ap:.1f}", f"{e.mask_ap:.1f}", link]
        row = next((line for line in text.splitlines() if line.startswith(f"| `{e.id}` |")), None)
        assert row is not None, f"README has no table row for {e.id}"
        assert [c.strip() for c in row.strip("|").split("|")][:1] == cells[:1]
        for cell in cells[1:]:
            assert f" {cell} " in row, (e.id, cell, row)


# --------------------------------------------------------------------------- anzoo.schema
def test_entries_hold_the_vocabulary_with_its_labels():
    entry = zoo.get_entry("cascade-aognet40m-an")
    assert entry.detector is Detector.cascade_mask_rcnn and entry.detector == "cascade_mask_rcnn"
    assert (entry.detector.label, entry.backbone.label, entry.backbone_norm.label, entry.head_norm.label) == \
        ("Cascade Mask R-CNN", "AOGNet-40m", "AN (w/ BN)", "-")
    backbone = zoo.get_backbone_entry("r101-an")
    assert backbone.arch is Backbone.resnet101 and backbone.norm is BackboneNorm.an
    # made from plain strings (a user's code), the fields still hold the members
    made = ZooEntry(id="x", detector="mask_rcnn", backbone="resnet50", backbone_norm="an", head_norm="gn",
                    weights=None)
    assert made.head_norm is HeadNorm.gn and made.backbone_id == "r50-an"
    with pytest.raises(ValueError):
        ZooEntry(id="x", detector="yolo", backbone="resnet50", backbone_norm="an", head_norm="gn", weights=None)


def test_to_json_follows_the_fields():
    entry = zoo.get_entry("aognet40m-an-gn")
    data = entry.to_json()
    assert list(data) == ["id", "detector", "backbone", "backbone_norm", "head_norm", "schedule", "params_m",
                          "box_ap", "mask_ap", "weights", "backbone_id", "pretrained_backbone", "config",
                          "num_classes", "class_names", "papers", "notes", "zoo_file"]
    assert json.loads(json.dumps(data)) == data  # plain JSON: enums as strings, tuples as lists
    assert (data["detector"], data["head_norm"], data["backbone_id"]) == ("mask_rcnn", "an_gn", "aognet40m-an")
    assert type(data["detector"]) is str
    assert data["weights"] == {"source": "https://drive.google.com/open?id=1QbVVHi_bE_tEIR0H8u-1FXa2jCzN7GvA",
                               "gdrive_id": "1QbVVHi_bE_tEIR0H8u-1FXa2jCzN7GvA", "url": None, "mirrors": [],
                               "sha256_pinned": None}
    assert data["zoo_file"] == "zoo.yaml" and data["papers"][0]["link"].startswith("https://arxiv.org/abs/")
    assert zoo.get_entry("r50-gn").to_json()["weights"] == {"source": None, "gdrive_id": None, "url": None,
                                                            "mirrors": [], "sha256_pinned": None}
    backbone = zoo.get_backbone_entry("aognet12m-an").to_json()
    assert list(backbone) == ["id", "arch", "norm", "params_m", "top1_error", "top5_error", "weights", "config",
                              "papers", "notes", "zoo_file"]


def test_a_new_field_is_one_line_in_the_dataclass():
    """Parsing, the unknown-field check and to_json() all follow dataclasses.fields."""
    @dataclasses.dataclass(frozen=True)
    class EntryWithFps(ZooEntry):
        fps: float | None = entry_field(lambda reader, name: reader.number(name, hi=1000.0), default=None)

    raw = {"id": "fast", "detector": "mask_rcnn", "backbone": "resnet50", "backbone_norm": "bn",
           "head_norm": "none", "weights": None}
    entry = parse_entry(EntryWithFps, {**raw, "fps": 12}, file="f.yaml", section="models", index=0, papers={})
    assert entry.fps == 12.0 and entry.to_json()["fps"] == 12.0 and entry.to_json()["zoo_file"] == "f.yaml"
    with pytest.raises(ZooSchemaError, match=r"f.yaml: entry 'fast' \(models\[0\]\), field 'fps': 2000 must be"):
        parse_entry(EntryWithFps, {**raw, "fps": 2000}, file="f.yaml", section="models", index=0, papers={})
    with pytest.raises(ZooSchemaError, match="'fps': unknown field"):  # the plain entry has no such field
        parse_entry(ZooEntry, {**raw, "fps": 12}, file="f.yaml", section="models", index=0, papers={})


@pytest.mark.parametrize("name", ["backbone_id", "source"])
def test_derived_and_loader_fields_are_not_read_from_files(extra_zoo, name):
    extra_zoo(models=[{"id": "mine", name: "r50-bn"}])
    with pytest.raises(ZooSchemaError, match=f"field '{name}': unknown field"):
        zoo.load_zoo()


def test_backbone_short_names():
    assert BACKBONE_NAMES == ("resnet50", "resnet101", "aognet12m", "aognet40m", "r50", "r101")
    assert [b.id for b in zoo.list_backbone_entries(backbone="r101")] == ["r101-bn", "r101-an"]
    assert zoo.list_backbone_entries(backbone="resnet101") == zoo.list_backbone_entries(backbone="r101")
