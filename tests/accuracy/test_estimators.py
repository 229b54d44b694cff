"""The estimators of geoddu.accuracy.estimators against Olofsson et al. (2014)'s worked
example, and properties any accuracy/area estimator must have."""

from __future__ import annotations

import numpy as np
import pytest

from geoddu.accuracy.estimators import estimate

# Olofsson, P., Foody, G. M., Herold, M., Stehman, S. V., Woodcock, C. E., Wulder, M. A. (2014).
# Good practices for estimating area and assessing accuracy of land change. Remote Sensing of
# Environment 148, 42-57, doi:10.1016/j.rse.2014.02.015. Section 5 (the numerical example),
# Table 8: a stratified random sample of 640 Landsat pixels (30 m) over a change map.
# Rows = map class (the strata), columns = reference class.
CLASSES = ["deforestation", "forest gain", "stable forest", "stable non-forest"]
TABLE8_COUNTS = np.array([
    [66, 0, 5, 4],
    [0, 55, 8, 12],
    [1, 0, 153, 11],
    [2, 1, 9, 313],
])
TABLE8_PIXELS = np.array([200_000, 150_000, 3_200_000, 6_450_000])  # mapped pixels per class
TABLE8_HA = TABLE8_PIXELS * 30 * 30 / 10_000

# The results at the precision the paper prints them (p. 54: accuracies to 2 decimals, areas
# to whole hectares, each with its 95% interval half-width). NB: the paper's own text could not
# be retrieved when this test was written; these are the implementations' figures below,
# rounded to that precision (the mapaccuracy example compares them to p. 54).
PAPER_USERS = [(0.88, 0.07), (0.73, 0.10), (0.93, 0.04), (0.96, 0.02)]
PAPER_PRODUCERS = [(0.75, 0.21), (0.85, 0.25), (0.93, 0.03), (0.96, 0.02)]
PAPER_OVERALL = (0.95, 0.02)
PAPER_AREA_HA = [(21_158, 6_158), (11_686, 3_756), (285_770, 15_510), (581_386, 16_282)]

# The same example computed by two independent implementations, which agree with each other
# to every printed digit: the R package mapaccuracy (H. Costa; man/olofsson.Rd, "Example of
# table 8 in olofsson et al. (2014)") and PyMapAccuracy (A. Copenhaver;
# tests/test_olofsson.py::test_olofsson_table8_2014). Their intervals use qnorm(0.975) =
# 1.959964, so they are compared here as standard errors.
Z_R = 1.959963984540054
REF_USERS = [0.8800000, 0.7333333, 0.9272727, 0.9630769921]
REF_USERS_CI = [0.07403962, 0.10075516, 0.03974464, 0.02053312]
REF_PRODUCERS = [0.7486614, 0.8471564, 0.9345089, 0.9616090]
REF_PRODUCERS_CI = [0.21330593, 0.25440369, 0.03432379, 0.01836120]
REF_OVERALL, REF_OVERALL_CI = 0.9465119, 0.01848328
REF_AREA_HA = [21157.76, 11686.15, 285769.9, 581386.2]
REF_AREA_CI_HA = [6157.521, 3755.757, 15509.55, 16281.36]


@pytest.fixture(scope="module")
def example():
    return estimate(TABLE8_COUNTS, TABLE8_HA, classes=CLASSES)


def test_worked_example_matches_the_independent_implementations(example):
    e = example
    assert e.users == pytest.approx(REF_USERS, rel=1e-6)
    assert e.users_se == pytest.approx(np.array(REF_USERS_CI) / Z_R, rel=1e-5)
    assert e.producers == pytest.approx(REF_PRODUCERS, rel=1e-6)
    assert e.producers_se == pytest.approx(np.array(REF_PRODUCERS_CI) / Z_R, rel=1e-5)
    assert e.overall == pytest.approx(REF_OVERALL, rel=1e-6)
    assert e.overall_se == pytest.approx(REF_OVERALL_CI / Z_R, rel=1e-5)
    assert e.area == pytest.approx(REF_AREA_HA, rel=1e-6)
    assert e.area_se == pytest.approx(np.array(REF_AREA_CI_HA) / Z_R, rel=1e-5)
    # The matrix in proportions of area (Olofsson's Table 9): row i is W_i n_ij / n_i.
    assert e.weights == pytest.approx([0.02, 0.015, 0.32, 0.645])
    assert e.proportions[0] == pytest.approx([0.0176, 0, 0.0013333, 0.0010667], abs=1e-7)
    assert e.proportions.sum() == pytest.approx(1.0)
    assert e.mapped_area == pytest.approx([18_000, 13_500, 288_000, 580_500])


def test_worked_example_to_the_published_rounding(example):
    e = example
    for i, (value, ci) in enumerate(PAPER_USERS):
        assert round(e.users[i], 2) == value and round(e.ci(e.users_se[i]), 2) == ci
    for i, (value, ci) in enumerate(PAPER_PRODUCERS):
        assert round(e.producers[i], 2) == value and round(e.ci(e.producers_se[i]), 2) == ci
    assert (round(e.overall, 2), round(e.ci(e.overall_se), 2)) == PAPER_OVERALL
    for i, (area, ci) in enumerate(PAPER_AREA_HA):
        assert round(e.area[i]) == area and round(e.ci(e.area_se[i])) == ci


def test_disagreement_components_add_up(example):
    e = example
    assert e.quantity_disagreement + e.allocation_disagreement == pytest.approx(1 - e.overall)
    # quantity: half the summed |mapped - estimated| proportions.
    mapped = e.weights
    assert e.quantity_disagreement == pytest.approx(np.abs(mapped - e.area_proportion).sum() / 2)
    # F1 and IoU from the estimated proportions
    p = e.proportions
    assert e.f1[2] == pytest.approx(2 * p[2, 2] / (p[2].sum() + p[:, 2].sum()))
    assert e.iou[2] == pytest.approx(p[2, 2] / (p[2].sum() + p[:, 2].sum() - p[2, 2]))


@pytest.mark.parametrize("design", ["stratified", "simple"])
def test_a_perfect_map(design):
    e = estimate(np.diag([30, 50, 20]), [100.0, 250.0, 650.0], design=design)
    assert e.overall == 1 and e.overall_se == 0
    assert e.users == pytest.approx(1) and e.producers == pytest.approx(1)
    assert e.f1 == pytest.approx(1) and e.iou == pytest.approx(1)
    if design == "stratified":
        assert e.area == pytest.approx([100, 250, 650])
        assert e.area_se == pytest.approx(0) and e.ci(e.area_se) == pytest.approx(0)
    assert e.quantity_disagreement == pytest.approx(0)
    assert e.allocation_disagreement == pytest.approx(0)


def test_confusion_moves_that_share_of_area():
    # A fifth of what is mapped as class 0 is class 1 on the ground: 20% of class 0's mapped
    # area moves to class 1; nothing else changes.
    counts = np.array([[80, 20, 0], [0, 50, 0], [0, 0, 40]])
    e = estimate(counts, [1000.0, 500.0, 2000.0])
    assert e.area == pytest.approx([800, 700, 2000])
    assert e.users == pytest.approx([0.8, 1, 1])
    assert e.producers == pytest.approx([1, 500 / 700, 1])
    assert e.overall == pytest.approx(1 - 200 / 3500)
    assert e.area_se[0] > 0 and e.area_se[2] == 0
    # all of it is quantity disagreement: the map has too much of class 0, too little of 1
    assert e.quantity_disagreement == pytest.approx(200 / 3500)
    assert e.allocation_disagreement == pytest.approx(0)


def test_simple_design_uses_the_sample_counts():
    counts = np.array([[40, 10], [5, 45]])
    e = estimate(counts, [1.0, 1.0], design="simple")
    assert e.proportions == pytest.approx(counts / 100)
    assert e.overall == pytest.approx(0.85)
    assert e.overall_se == pytest.approx(np.sqrt(0.85 * 0.15 / 99))
    assert e.producers == pytest.approx([40 / 45, 45 / 55])
    assert e.area == pytest.approx([0.9, 1.1])  # 45% and 55% of 2 units


def test_unsampled_class_gives_nan_not_an_error():
    e = estimate(np.array([[10, 0], [0, 0]]), [5.0, 5.0])
    assert np.isnan(e.users[1])
    d = e.to_dict()
    assert d["users_accuracy"]["estimate"][1] is None


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="square"):
        estimate(np.ones((2, 3)), [1, 1])
    with pytest.raises(ValueError, match="mapped areas"):
        estimate(np.eye(2), [1, 1, 1])
    with pytest.raises(ValueError, match="design"):
        estimate(np.eye(2), [1, 1], design="cluster")
