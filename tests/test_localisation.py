import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from gradsim_utils import localisation as loc


def test_threshold_box_keeps_the_largest_region_not_the_highest_peak():
    m = np.zeros((10, 12))
    m[1:3, 1:3] = 1.0          # small, strongest
    m[5:9, 4:10] = 0.5         # large, weaker: still above 0.2 after normalisation
    assert loc.threshold_box(m).tolist() == [4, 5, 10, 9]


def test_threshold_box_threshold_is_relative_to_the_map_range():
    m = np.full((8, 8), 10.0)
    m[2:4, 2:6] = 11.0          # only these pass (m - 10) / 1 >= 0.2
    assert loc.threshold_box(m).tolist() == [2, 2, 6, 4]
    assert loc.threshold_box(m, threshold=0.0).tolist() == [0, 0, 8, 8]


def test_constant_and_zero_maps_give_the_whole_image():
    for m in (np.zeros((5, 7)), np.full((5, 7), 3.0)):
        assert loc.threshold_box(m).tolist() == [0, 0, 7, 5]


def test_diagonal_neighbours_join_one_region():
    m = np.zeros((6, 6))
    m[1, 1] = m[2, 2] = m[3, 3] = 1.0
    m[0, 5] = 1.0
    assert loc.threshold_box(m).tolist() == [1, 1, 4, 4]


def test_paired_iou_matches_torchvision_diagonal():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 20
    wh = torch.rand(20, 2, generator=g) * 10
    a = torch.cat([xy, xy + wh], 1)
    b = torch.cat([xy + 3, xy + 3 + wh.flip(0)], 1)
    assert torch.allclose(loc.paired_box_iou(a, b), box_iou(a, b).diagonal().double(), atol=1e-6)


def test_hand_worked_iou_and_accuracy():
    iou = loc.paired_box_iou([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1]], [[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    assert iou.tolist() == pytest.approx([1 / 7, 1.0, 0.0])
    assert loc.localisation_accuracy(iou) == pytest.approx(1 / 3)
    assert loc.localisation_hits(iou).tolist() == [False, True, False]
    assert loc.localisation_hits(np.array([[0.5, 0.39]]), min_iou=0.4).tolist() == [[True, False]]
    with pytest.raises(ValueError, match="empty"):
        loc.localisation_accuracy([])
    with pytest.raises(ValueError, match="x1 >= x0"):
        loc.paired_box_iou([[2, 0, 1, 1]], [[0, 0, 1, 1]])


def test_pointing_game_and_mask_iou():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1] = 1
    maps[1, 3, 3] = 1
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    assert loc.pointing_game(maps, masks).tolist() == [True, False]
    assert loc.mask_iou(masks[0], masks[0]).item() == 1.0
    assert loc.mask_iou(torch.zeros(3, 3), torch.zeros(3, 3)).item() == 0.0
    with pytest.raises(ValueError, match="NaN"):
        loc.threshold_box(np.full((3, 3), np.nan))


def test_centre_prior_shape_peak_and_formula():
    odd = loc.centre_prior(9)
    assert odd.shape == (9, 9) and odd.argmax() == 4 * 9 + 4 and odd.max().item() == 1.0
    assert torch.allclose(odd, odd.flip(0)) and torch.allclose(odd, odd.T)
    # pixel (0, 4): y' = 0.5 / 9 - 0.5, x' = 0; sigma a quarter of the side
    assert odd[0, 4].item() == pytest.approx(np.exp(-(0.5 / 9 - 0.5) ** 2 / (2 * 0.25 ** 2)), rel=1e-6)
    even = loc.centre_prior((8, 8))
    middle = even[3:5, 3:5]
    assert (middle == even.max()).all() and (even < even.max()).sum() == 60 and even.max() < 1
    assert loc.centre_prior((6, 10)).shape == (6, 10)
    assert loc.centre_prior(9, sigma=0.1)[0, 0] < odd[0, 0]  # a narrower prior falls off faster
    with pytest.raises(ValueError, match="sigma"):
        loc.centre_prior(9, sigma=0.0)
    with pytest.raises(ValueError, match="size"):
        loc.centre_prior(0)


def test_pointing_game_of_the_centre_prior_on_hand_made_masks():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True     # a central object: hit
    masks[1, :3, :3] = True       # a corner object: miss
    masks[2, 4, 4] = True         # one of the four tied middle pixels: ties count, hit
    prior = loc.centre_prior(8).expand(3, 8, 8)
    assert loc.pointing_game(prior, masks).tolist() == [True, False, True]


def test_box_masks_hold_the_pixels_whose_centres_lie_in_the_box():
    boxes = torch.tensor([[1.0, 0.0, 3.0, 2.0], [0.4, 0.6, 1.6, 1.6], [float("nan")] * 4])
    masks = loc.box_masks(boxes, (3, 4))
    expected = torch.zeros(3, 3, 4, dtype=torch.bool)
    expected[0, 0:2, 1:3] = True  # integer edges, x1/y1 exclusive
    expected[1, 1, 0:2] = True    # fractional edges: x centres 0.5, 1.5 in [0.4, 1.6]; y only 1.5 in [0.6, 1.6]
    assert torch.equal(masks, expected)  # the NaN row: no box, an empty mask
    maps = torch.zeros(3, 3, 4)
    maps[:, 1, 2] = 1
    assert loc.pointing_game(maps, masks).tolist() == [True, False, False]
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        loc.box_masks(torch.zeros(4), 3)


def test_area_chance_is_the_object_share():
    masks = torch.zeros(2, 4, 5, dtype=torch.bool)
    masks[0, :2, :] = True
    assert loc.area_chance(masks).tolist() == pytest.approx([0.5, 0.0])
    assert loc.area_chance(masks[0]).tolist() == pytest.approx([0.5])
    with pytest.raises(ValueError, match="boolean"):
        loc.area_chance(masks.double())


def test_threshold_boxes_equal_threshold_box_per_map():
    rng = np.random.default_rng(5)
    coarse = torch.as_tensor(rng.random((40, 5, 5)))
    maps = torch.nn.functional.interpolate(coarse[:, None], size=(37, 41), mode="bilinear")[:, 0]
    blocky = torch.as_tensor(rng.integers(0, 3, size=(20, 9, 9)), dtype=torch.float64)  # ties in size and mass
    stacks = [maps, blocky, torch.zeros(3, 6, 6), torch.cat([torch.ones(1, 6, 6), maps[:2, :6, :6]])]
    for stack in stacks:
        for threshold in (0.0, 0.2, 0.7, 1.0):
            expected = torch.stack([loc.threshold_box(m, threshold) for m in stack])
            torch.testing.assert_close(loc.threshold_boxes(stack, threshold), expected)
    with pytest.raises(ValueError):
        loc.threshold_boxes(maps, threshold=1.5)
