"""Class taxonomies and the declared mappings between them (the ground floor: pure numpy, imports nothing).

A :class:`Taxonomy` is an ordered list of class names plus the id of *void* (pixels that carry no
label). The model predicts in :data:`CAMVID` (11 classes, void 11). Other label vendors use other
schemes: IDD-lite labels India's roads in IDD's 7 level-1 groups (:data:`IDD_LEVEL1`, void 7). A
:class:`TaxonomyMapping` declares, for each fine class, the coarse class it belongs to; it is never
guessed from names. With it

- a label mask in the fine scheme becomes a mask in the coarse one (:meth:`TaxonomyMapping.map_labels`),
- a probability map over fine classes becomes one over coarse classes by summing the fine classes of
  each group (:meth:`TaxonomyMapping.map_probs`): ``p(group) = sum_{c in group} p(c)``, which is how a
  model trained in one scheme is both evaluated and trained against labels of the other.

Every layer may import this module; it imports nothing of avminer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


class TaxonomyError(ValueError):
    """A taxonomy or mapping declaration is inconsistent (unknown class, missing mapping, bad void id)."""


@dataclass(frozen=True)
class Taxonomy:
    """An ordered class list and the void id.

    Attributes:
        name: short identifier (``camvid11``, ``idd_level1``) used in configs, reports and manifests.
        classes: class names by id ``0..C-1``.
        void: the id of unlabelled pixels; ``>= C`` so that it never collides with a class.
    """

    name: str
    classes: tuple[str, ...]
    void: int

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes):
            raise TaxonomyError(f"taxonomy {self.name!r}: class names repeat: {list(self.classes)}")
        if self.void < len(self.classes) or self.void > 255:
            raise TaxonomyError(
                f"taxonomy {self.name!r}: void must be in {len(self.classes)}..255 (after the classes), "
                f"got {self.void}"
            )

    @property
    def num_classes(self) -> int:
        """Number of real classes (void excluded)."""
        return len(self.classes)

    def index(self, class_name: str) -> int:
        """Id of ``class_name``; raises :class:`TaxonomyError` naming the known classes."""
        try:
            return self.classes.index(class_name)
        except ValueError:
            raise TaxonomyError(
                f"taxonomy {self.name!r} has no class {class_name!r}; classes: {list(self.classes)}"
            ) from None


CAMVID = Taxonomy(
    name="camvid11",
    classes=(
        "sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car", "pedestrian",
        "bicyclist",
    ),
    void=11,
)
"""CamVid's 11 classes (SegNet release); the model's own output classes."""

RARE_CLASSES: tuple[str, ...] = ("pedestrian", "bicyclist", "sign_symbol")
"""CamVid classes that are few pixels but matter most: the scoring head weighs their pixels' MI up."""

IDD_LEVEL1 = Taxonomy(
    name="idd_level1",
    classes=("drivable", "non_drivable", "living_things", "vehicles", "roadside_objects", "far_objects", "sky"),
    void=7,
)
"""IDD's 7 level-1 groups, as labelled in IDD-lite (255 there is stored as 7)."""


@dataclass(frozen=True)
class TaxonomyMapping:
    """A declared many-to-one mapping from a fine taxonomy onto a coarse one.

    Attributes:
        source: the fine taxonomy (what the model predicts).
        target: the coarse taxonomy (what the labels are in).
        groups: target class name -> the source class names it is made of. Every source class belongs
            to exactly one group; a target class may be empty only if it is listed with no members
            (it then can never be predicted, and mIoU skips it unless it appears in the labels).
    """

    source: Taxonomy
    target: Taxonomy
    groups: Mapping[str, Sequence[str]]
    _lut: NDArray[np.uint8] = field(init=False, repr=False, compare=False)
    _matrix: NDArray[np.float32] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        owner: dict[str, str] = {}
        for group, members in self.groups.items():
            self.target.index(group)
            for member in members:
                self.source.index(member)
                if member in owner:
                    raise TaxonomyError(
                        f"mapping {self.source.name}->{self.target.name}: {member!r} is in both "
                        f"{owner[member]!r} and {group!r}"
                    )
                owner[member] = group
        missing = [c for c in self.source.classes if c not in owner]
        if missing:
            raise TaxonomyError(
                f"mapping {self.source.name}->{self.target.name}: source classes {missing} belong to no group"
            )
        lut = np.full(256, self.target.void, dtype=np.uint8)  # source id -> target id, void -> void
        matrix = np.zeros((self.target.num_classes, self.source.num_classes), dtype=np.float32)  # [G, C]
        for i, name in enumerate(self.source.classes):
            g = self.target.index(owner[name])
            lut[i] = g
            matrix[g, i] = 1.0
        object.__setattr__(self, "_lut", lut)
        object.__setattr__(self, "_matrix", matrix)

    @property
    def matrix(self) -> NDArray[np.float32]:
        """float32 ``[G, C]`` 0/1 membership matrix (row g sums the source classes of group g)."""
        return self._matrix

    def map_labels(self, labels: NDArray[np.integer]) -> NDArray[np.uint8]:
        """Source-taxonomy ids (any shape, void and unknown ids included) -> target ids, void -> void."""
        return self._lut[np.asarray(labels, dtype=np.uint8)]

    def map_probs(self, probs: NDArray[np.floating], axis: int = 1) -> NDArray[np.float32]:
        """Sum fine-class probabilities into group probabilities along ``axis``.

        Args:
            probs: probabilities with the source classes on ``axis`` (e.g. ``[N, C, H, W]``, axis 1).
            axis: the class axis.

        Returns:
            float32 with the target classes on ``axis`` (``[N, G, H, W]``).
        """
        p = np.moveaxis(np.asarray(probs, dtype=np.float32), axis, -1)  # [..., C]
        if p.shape[-1] != self.source.num_classes:
            raise TaxonomyError(
                f"probabilities have {p.shape[-1]} classes on axis {axis}; {self.source.name} has "
                f"{self.source.num_classes}"
            )
        return np.moveaxis(p @ self._matrix.T, -1, axis)  # [..., G] -> class axis back in place


CAMVID_TO_IDD_LEVEL1 = TaxonomyMapping(
    source=CAMVID,
    target=IDD_LEVEL1,
    groups={
        "drivable": ("road",),
        "non_drivable": ("sidewalk",),
        "living_things": ("pedestrian", "bicyclist"),
        "vehicles": ("car",),
        "roadside_objects": ("pole", "sign_symbol", "fence"),
        "far_objects": ("building", "tree"),
        "sky": ("sky",),
    },
)
"""CamVid's classes onto IDD's level-1 groups (IDD's own level-1 definitions: road -> drivable,
sidewalk -> non_drivable, person/rider -> living things, car -> vehicles, pole/sign/fence -> roadside
objects, building/vegetation -> far objects)."""

TAXONOMIES: dict[str, Taxonomy] = {t.name: t for t in (CAMVID, IDD_LEVEL1)}
"""Known taxonomies by name."""

MAPPINGS: dict[tuple[str, str], TaxonomyMapping] = {
    (CAMVID_TO_IDD_LEVEL1.source.name, CAMVID_TO_IDD_LEVEL1.target.name): CAMVID_TO_IDD_LEVEL1,
}
"""Declared mappings by (source name, target name)."""


def taxonomy_for(classes: Sequence[str], void: int) -> Taxonomy:
    """The known taxonomy with exactly these classes and void id (e.g. from a dataset's ``classes.json``).

    Raises:
        TaxonomyError: no known taxonomy matches; the message lists the known ones.
    """
    wanted = (tuple(classes), int(void))
    for tax in TAXONOMIES.values():
        if (tax.classes, tax.void) == wanted:
            return tax
    known = {name: (list(t.classes), t.void) for name, t in TAXONOMIES.items()}
    raise TaxonomyError(f"classes {list(classes)} with void {void} match no known taxonomy; known: {known}")


def mapping(source: Taxonomy, target: Taxonomy) -> TaxonomyMapping | None:
    """The declared mapping from ``source`` to ``target``; ``None`` when they are the same taxonomy.

    Raises:
        TaxonomyError: no mapping is declared between them.
    """
    if source == target:
        return None
    try:
        return MAPPINGS[(source.name, target.name)]
    except KeyError:
        raise TaxonomyError(
            f"no declared mapping from {source.name} to {target.name}; declared: {sorted(MAPPINGS)}"
        ) from None


def confusion(
    pred: NDArray[np.integer], truth: NDArray[np.integer], taxonomy: Taxonomy | int
) -> NDArray[np.int64]:
    """``[C, C]`` confusion counts (rows truth, columns prediction); void truth pixels are skipped.

    ``taxonomy`` may also be just the number of classes C (a model trained on a ``classes.json`` of its
    own); every truth id ``>= C`` is void then. Predictions must be class ids (never void).
    """
    t = np.asarray(truth).ravel()
    p = np.asarray(pred).ravel()
    c = taxonomy if isinstance(taxonomy, int) else taxonomy.num_classes
    valid = t < c
    idx = t[valid].astype(np.int64) * c + p[valid].astype(np.int64)
    return np.bincount(idx, minlength=c * c).reshape(c, c)


def iou_per_class(cm: NDArray[np.int64]) -> NDArray[np.float64]:
    """IoU per class from a confusion matrix; NaN where a class is in neither truth nor prediction."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm: NDArray[np.int64]) -> float:
    """Mean IoU over the classes present in truth or prediction (NaN when there are none)."""
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
