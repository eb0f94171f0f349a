"""Labels of another taxonomy made trainable for a model of a finer one, where the mapping is one-to-one.

A frame labeled in IDD's level-1 groups cannot be trained on as CamVid ids. The exact way is a loss on
summed probabilities (``p(group) = sum of its classes``); until the trainer has it, :func:`lift_labels`
keeps what is unambiguous: a pixel of a group made of exactly *one* model class (drivable -> road,
non_drivable -> sidewalk, vehicles -> car, sky -> sky) becomes that class, every other pixel void. The
multi-class groups (living things, roadside objects, far objects) teach nothing this way.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from avminer.taxonomy import TaxonomyMapping


def lift_labels(labels: NDArray[np.integer], mapping: TaxonomyMapping) -> NDArray[np.uint8]:
    """Coarse (``mapping.target``) label ids -> fine (``mapping.source``) ids where a group has one member.

    Args:
        labels: class ids of ``mapping.target`` (any shape; its void and unknown ids become void).
        mapping: the declared fine -> coarse mapping.

    Returns:
        uint8 ids of ``mapping.source``, its void where the group is ambiguous or the pixel unlabeled.
    """
    lut = np.full(256, mapping.source.void, dtype=np.uint8)
    members = mapping.matrix  # [G, C] 0/1
    for g in range(mapping.target.num_classes):
        fine = np.flatnonzero(members[g])
        if len(fine) == 1:
            lut[g] = int(fine[0])
    return lut[np.asarray(labels, dtype=np.uint8)]
