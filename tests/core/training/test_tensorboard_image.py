"""The confusion matrix's TensorBoard image: a cell per class pair, bounded in size."""

from __future__ import annotations

import numpy as np
import pytest

from core.training.tensorboard import CELL_PX, CONFUSION_MAX_PX, confusion_image


def test_two_classes_get_full_cells_coloured_by_the_rows_share() -> None:
    image = confusion_image([[3, 1], [0, 4]])
    assert image.shape == (2 * CELL_PX, 2 * CELL_PX, 3) and image.dtype == np.uint8
    inside = CELL_PX // 2  # a pixel inside each cell, away from the grid lines
    full, quarter, empty = (
        image[CELL_PX + inside, CELL_PX + inside],
        image[inside, CELL_PX + inside],
        image[CELL_PX + inside, inside],
    )
    assert full.tolist() == [31, 119, 180]  # the whole row: the darkest blue
    assert empty.tolist() == [255, 255, 255]  # none of the row: white
    assert quarter.tolist() == [round(255 - 0.25 * (255 - c)) for c in (31, 119, 180)]
    assert image[0, inside].tolist() == [200, 200, 200]  # a grid line


@pytest.mark.parametrize("classes", [60, 200, 1000])
def test_many_classes_stay_within_the_bound_one_square_per_pair(classes: int) -> None:
    matrix = np.eye(classes, dtype=int) * 5
    matrix[0, classes - 1] = 5  # class 0: half of its row predicted as the last class
    image = confusion_image(matrix.tolist())
    side = image.shape[0]
    assert image.shape == (side, side, 3) and side <= CONFUSION_MAX_PX
    px = side // classes
    assert px >= 1 and side == px * classes
    last = (classes - 1) * px + px // 2
    assert image[last, last].tolist() == [31, 119, 180]  # a diagonal cell, all of its row
    half = [round(255 - 0.5 * (255 - c)) for c in (31, 119, 180)]
    assert image[px // 2, last].tolist() == half
