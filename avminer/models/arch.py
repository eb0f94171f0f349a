"""The architecture description (``arch``) every avminer ensemble is rebuilt from.

An ``arch`` is a plain JSON-able dict, stored in ``model.pt`` and in the bundle manifest, that names every
block's channel counts explicitly, so a pruned, low-rank or expanded variant rebuilds from it alone::

    {
      "family": "erfnet",            # the only family so far
      "version": 1,
      "num_classes": 11,
      "members": 4,                  # ensemble size K
      "width": 0.5,                  # informational: the multiplier the blocks were made with
      "mean": [r, g, b], "std": [r, g, b],   # input normalisation in 0..255 units (inside the graph)
      "blocks": [ ... ],             # one dict per block, in order (below)
      "feature_taps": [i, j],        # blocks whose outputs are average-pooled into the feature vector
      "convs": {"blocks.4.conv3x1_1": {"rank": 8}, "blocks.2.conv": {"expand": 4}},   # optional
      "member_blocks": None,         # optional: a list of K block lists (members pruned differently)
    }

Block dicts (channel names are output channels of the named convolution):

- ``{"type": "down", "in": Ci, "conv": Cc}``: ERFNet downsampler, concat(conv3x3/2 (Ci->Cc), maxpool(Ci)),
  BN, ReLU; ``out = Ci + Cc``. Convs: ``conv``.
- ``{"type": "nb1d", "ch": C, "mid": [M1, M2, M3], "dilation": d, "dropout": p}``: non-bottleneck-1D,
  ``conv3x1_1`` (C->M1) ReLU ``conv1x3_1`` (M1->M2) BN ReLU ``conv3x1_2`` (M2->M3, dilated) ReLU
  ``conv1x3_2`` (M3->C, dilated) BN Dropout, + input, ReLU. ``mid`` is ``[C, C, C]`` unpruned.
- ``{"type": "up", "in": Ci, "out": Co}``: ConvTranspose 3x3/2 (``deconv``), BN, ReLU.
- ``{"type": "out", "in": Ci, "out": num_classes}``: ConvTranspose 2x2/2 (``deconv``) to class logits.

``convs`` keys are module paths inside one member (``member.named_modules()`` names); values:
``{"rank": r}`` — a k×k conv split into k×k (in->r, no bias) then 1×1 (r->out) (low-rank / SVD), or
``{"expand": r}`` — ExpandNets (:class:`avminer.models.erfnet.ExpandedConv`): the input padded once, then
1×1 (in->r·in), k×k (r·in->r·out, valid), 1×1 (r·out->out), every layer biased, so the chain contracts
exactly into one k×k conv (:func:`avminer.trainer.expandnet.contract`). Transposed convs take no overrides.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from avminer.errors import TrainerError
from avminer.taxonomy import CAMVID

FAMILY = "erfnet"
ARCH_VERSION = 1
# ImageNet statistics in 0..255 units; the net normalises inside the graph so engines feed raw pixels.
DEFAULT_MEAN = [123.675, 116.28, 103.53]
DEFAULT_STD = [58.395, 57.12, 57.375]
DEFAULT_CLASSES = CAMVID.num_classes


def _ch(base: int, width: float) -> int:
    return max(4, int(round(base * width)))


def erfnet_arch(
    width: float = 0.5,
    num_classes: int = DEFAULT_CLASSES,
    members: int = 4,
    dropout: tuple[float, float] = (0.03, 0.3),
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> dict[str, Any]:
    """The ERFNet layout (Romera et al., 2017) with a width multiplier, as an ``arch`` dict.

    Encoder: down(3->16w), down(16w->64w), 5 x nb1d(64w), down(64w->128w), 8 x nb1d(128w) with dilations
    2, 4, 8, 16 twice. Decoder: up(128w->64w), 2 x nb1d(64w), up(64w->16w), 2 x nb1d(16w), out(16w->C).
    Width 1.0 is the paper's net; the 16w stage keeps at least 12 channels. The input height and width
    must be multiples of 8.

    Args:
        width: channel multiplier (0.5 is "ERFNet-half").
        num_classes: output classes (void is not a class).
        members: ensemble size K.
        dropout: dropout probability of the 64w stage and of the 128w stage (the paper's 0.03 and 0.3).
        mean: per-channel input mean in 0..255 units (default ImageNet).
        std: per-channel input std in 0..255 units.
    """
    # The 16w stage is also the decoder's last: its channels are all the class logits are made from,
    # so it keeps at least 12 (one per class, roughly) however thin the rest of the net gets.
    c1, c2, c3 = max(12, _ch(16, width)), _ch(64, width), _ch(128, width)
    if c2 <= c1 or c3 <= c2:
        raise TrainerError(f"width {width} is too thin: stages need growing channels (got {c1}, {c2}, {c3})")

    def nb1d(c: int, dilation: int, p: float) -> dict[str, Any]:
        return {"type": "nb1d", "ch": c, "mid": [c, c, c], "dilation": dilation, "dropout": p}

    blocks: list[dict[str, Any]] = [
        {"type": "down", "in": 3, "conv": c1 - 3},
        {"type": "down", "in": c1, "conv": c2 - c1},
        *[nb1d(c2, 1, dropout[0]) for _ in range(5)],
        {"type": "down", "in": c2, "conv": c3 - c2},
        *[nb1d(c3, d, dropout[1]) for d in (2, 4, 8, 16, 2, 4, 8, 16)],
    ]
    taps = [6, len(blocks) - 1]  # end of the 64w stage and the encoder output
    blocks += [
        {"type": "up", "in": c3, "out": c2},
        nb1d(c2, 1, 0.0),
        nb1d(c2, 1, 0.0),
        {"type": "up", "in": c2, "out": c1},
        nb1d(c1, 1, 0.0),
        nb1d(c1, 1, 0.0),
        {"type": "out", "in": c1, "out": num_classes},
    ]
    return {
        "family": FAMILY,
        "version": ARCH_VERSION,
        "num_classes": num_classes,
        "members": members,
        "width": width,
        "mean": list(mean or DEFAULT_MEAN),
        "std": list(std or DEFAULT_STD),
        "blocks": blocks,
        "feature_taps": taps,
        "convs": {},
        "member_blocks": None,
    }


def block_out_channels(block: dict[str, Any]) -> int:
    """Channels a block hands to the next one."""
    kind = block["type"]
    if kind == "down":
        return int(block["in"]) + int(block["conv"])
    if kind == "nb1d":
        return int(block["ch"])
    if kind in ("up", "out"):
        return int(block["out"])
    raise TrainerError(f"unknown block type {kind!r}; expected down, nb1d, up or out")


def block_in_channels(block: dict[str, Any]) -> int:
    """Channels a block expects from the previous one."""
    return int(block["ch"]) if block["type"] == "nb1d" else int(block["in"])


def member_blocks(arch: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """The block list of member ``k`` (the shared one unless ``member_blocks`` is set)."""
    per_member = arch.get("member_blocks")
    if per_member:
        return list(per_member[k])
    return list(arch["blocks"])


def feature_dim(arch: dict[str, Any], k: int = 0) -> int:
    """Length D of the pooled feature vector."""
    blocks = member_blocks(arch, k)
    return sum(block_out_channels(blocks[i]) for i in arch["feature_taps"])


def validate_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """Check that an ``arch`` is complete and its channel counts chain; return a normalised deep copy.

    Raises:
        TrainerError: naming the first inconsistency found.
    """
    if not isinstance(arch, dict):
        raise TrainerError(f"arch must be a dict, got {type(arch).__name__}")
    out = copy.deepcopy(arch)
    if out.get("family", FAMILY) != FAMILY:
        raise TrainerError(f"arch family {out.get('family')!r} is not {FAMILY!r}; upgrade avminer")
    for key in ("num_classes", "members", "blocks", "feature_taps"):
        if key not in out:
            raise TrainerError(f"arch lacks {key!r}; build it with avminer.models.erfnet_arch()")
    out.setdefault("family", FAMILY)
    out.setdefault("version", ARCH_VERSION)
    out.setdefault("mean", list(DEFAULT_MEAN))
    out.setdefault("std", list(DEFAULT_STD))
    out.setdefault("convs", {})
    out.setdefault("member_blocks", None)
    members = int(out["members"])
    if members < 1:
        raise TrainerError(f"arch members must be >= 1, got {members}")
    if len(out["mean"]) != 3 or len(out["std"]) != 3 or min(out["std"]) <= 0:
        raise TrainerError("arch mean and std must be three numbers each, std > 0")
    if out["member_blocks"] is not None and len(out["member_blocks"]) != members:
        raise TrainerError(f"arch member_blocks has {len(out['member_blocks'])} lists for {members} members")
    dims = set()
    for k in range(members):
        blocks = member_blocks(out, k)
        channels = 3
        for i, block in enumerate(blocks):
            if block_in_channels(block) != channels:
                raise TrainerError(
                    f"arch block {i} ({block['type']}) expects {block_in_channels(block)} input channels "
                    f"but the previous block gives {channels}"
                )
            if block["type"] == "nb1d" and (len(block["mid"]) != 3 or min(block["mid"]) < 1):
                raise TrainerError(f"arch block {i}: nb1d mid must be three channel counts >= 1")
            if block["type"] == "down" and int(block["conv"]) < 1:
                raise TrainerError(f"arch block {i}: downsampler conv needs >= 1 channel")
            channels = block_out_channels(block)
        if not blocks or blocks[-1]["type"] != "out" or channels != int(out["num_classes"]):
            raise TrainerError("arch must end with an 'out' block giving num_classes channels")
        for t in out["feature_taps"]:
            if not 0 <= int(t) < len(blocks):
                raise TrainerError(f"arch feature tap {t} is not a block index")
        dims.add(feature_dim(out, k))
    if len(dims) != 1:
        raise TrainerError(f"members' feature dimensions differ ({sorted(dims)}); keep tapped blocks equal")
    for name, spec in out["convs"].items():
        if not isinstance(spec, dict) or not set(spec) <= {"rank", "expand"} or len(spec) != 1:
            raise TrainerError(f"arch convs[{name!r}] must be {{'rank': r}} or {{'expand': r}}, got {spec!r}")
    return out


def count_downsampling(arch: dict[str, Any]) -> int:
    """Total stride of the encoder: input height and width must be multiples of this."""
    return int(math.prod(2 for b in arch["blocks"] if b["type"] == "down"))
