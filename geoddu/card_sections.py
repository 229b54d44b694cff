"""The structured sections of a model card: ``accuracy`` (what `geoddu assess --into` writes)
and ``test`` (what `geoddu train` measured on the test split).

Their shape is fixed (docs/model-cards.md), so they are checked key by key and value by value,
like the rest of a checkpoint: a tampered section is one error line naming the field, never a
reader that trips over a string where it expected a number. Generic limits (sizes, nesting,
finite numbers) are :mod:`geoddu.card`'s; this module checks what each key must hold. No torch,
no numpy: `geoddu card --help` and the QGIS plugin import it through geoddu.card.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from .errors import Where, fail, show

__all__ = ["ACCURACY_CLASS_KEYS", "ACCURACY_KEYS", "DESIGNS", "TEST_KEYS", "check_accuracy",
           "check_test"]

DESIGNS = ("stratified", "simple")
# A share can come out a rounding step above 1 (a trace of proportions that sum to 1).
_SLACK = 1e-9

Check = Callable[[str, Any], None]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Checker:
    """Checks of one card for one `where` (the checkpoint's path, for the message)."""

    def __init__(self, where: Where) -> None:
        self.where = where

    def fail(self, field: str, problem: str) -> NoReturn:
        fail(self.where, field, problem)

    def text(self, field: str, value: Any) -> None:
        if not isinstance(value, str):
            self.fail(field, f"must be text, not {show(value)}")

    def count(self, field: str, value: Any) -> None:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            self.fail(field, f"must be a whole number of at least 0, not {show(value)}")

    def number(self, field: str, value: Any, low: float = 0.0, high: float | None = None,
               *, none: bool = True) -> None:
        if value is None and none:
            return
        ok = _is_number(value) and value >= low - _SLACK and (high is None
                                                               or value <= high + _SLACK)
        if not ok:
            span = f"between {low:g} and {high:g}" if high is not None else f"of at least {low:g}"
            self.fail(field, f"must be a number {span}{' or None' if none else ''}, "
                             f"not {show(value)}")

    def share(self, field: str, value: Any) -> None:
        self.number(field, value, 0.0, 1.0)

    def estimate(self, field: str, value: Any, high: float | None = 1.0) -> None:
        """{"estimate", "se", "ci"}: a figure, its standard error and the half-width of its
        interval; None where the sample cannot give one."""
        self.keys(field, value, ("estimate", "se", "ci"))
        self.number(f"{field}.estimate", value["estimate"], 0.0, high)
        self.number(f"{field}.se", value["se"])
        self.number(f"{field}.ci", value["ci"])

    def keys(self, field: str, value: Any, keys: tuple[str, ...]) -> None:
        """A dict with exactly `keys`."""
        if not isinstance(value, Mapping):
            self.fail(field, f"must be a dict, not {show(value)}")
        unknown = [k for k in value if k not in keys]
        if unknown:
            self.fail(field, f"unknown key(s) {', '.join(show(k) for k in unknown[:3])} "
                             f"(known: {', '.join(keys)})")
        missing = [k for k in keys if k not in value]
        if missing:
            self.fail(field, f"missing {', '.join(missing[:3])}")

    def items(self, field: str, value: Any, check: Check) -> None:
        if not isinstance(value, list | tuple):
            self.fail(field, f"must be a list, not {show(value)}")
        for n, item in enumerate(value):
            check(f"{field}[{n}]", item)


# -- accuracy ---------------------------------------------------------------------------------

ACCURACY_KEYS = (
    "map", "reference", "reference_kind", "sample_unit", "design", "sample_size", "skipped",
    "z", "area_unit", "overall_accuracy", "quantity_disagreement", "allocation_disagreement",
    "classes", "notes", "date",
)
ACCURACY_CLASS_KEYS = (
    "id", "name", "mapped_pixels", "mapped_area_ha", "sample_units", "users_accuracy",
    "producers_accuracy", "f1", "iou", "area_ha",
)


def check_accuracy(value: Any, where: Where = None) -> None:
    """The ``accuracy`` section (geoddu.accuracy.model_card.card_section's shape)."""
    c, f = _Checker(where), "card.accuracy"
    c.keys(f, value, ACCURACY_KEYS)
    for key in ("map", "reference", "reference_kind", "sample_unit", "area_unit", "date"):
        c.text(f"{f}.{key}", value[key])
    if value["design"] not in DESIGNS:
        c.fail(f"{f}.design", f"must be {' or '.join(DESIGNS)}, not {show(value['design'])}")
    if value["area_unit"] != "ha":
        c.fail(f"{f}.area_unit", f"must be 'ha', not {show(value['area_unit'])}")
    c.count(f"{f}.sample_size", value["sample_size"])
    c.count(f"{f}.skipped", value["skipped"])
    c.number(f"{f}.z", value["z"], none=False)
    c.estimate(f"{f}.overall_accuracy", value["overall_accuracy"])
    c.share(f"{f}.quantity_disagreement", value["quantity_disagreement"])
    c.share(f"{f}.allocation_disagreement", value["allocation_disagreement"])
    c.items(f"{f}.notes", value["notes"], c.text)

    def one_class(field: str, entry: Any) -> None:
        c.keys(field, entry, ACCURACY_CLASS_KEYS)
        if not (isinstance(entry["id"], int) and not isinstance(entry["id"], bool)
                and 0 <= entry["id"] <= 254):
            c.fail(f"{field}.id", f"must be a class id from 0 to 254, not {show(entry['id'])}")
        c.text(f"{field}.name", entry["name"])
        c.count(f"{field}.mapped_pixels", entry["mapped_pixels"])
        c.number(f"{field}.mapped_area_ha", entry["mapped_area_ha"], none=False)
        c.count(f"{field}.sample_units", entry["sample_units"])
        c.estimate(f"{field}.users_accuracy", entry["users_accuracy"])
        c.estimate(f"{field}.producers_accuracy", entry["producers_accuracy"])
        c.share(f"{field}.f1", entry["f1"])
        c.share(f"{field}.iou", entry["iou"])
        c.estimate(f"{field}.area_ha", entry["area_ha"], high=None)

    c.items(f"{f}.classes", value["classes"], one_class)
    if not value["classes"]:
        c.fail(f"{f}.classes", "must name at least one class")
    ids = [e["id"] for e in value["classes"]]
    if len(set(ids)) != len(ids):
        c.fail(f"{f}.classes", "a class id appears twice")


# -- test -------------------------------------------------------------------------------------

TEST_KEYS = ("evaluated", "split", "epoch", "patches", "pixels", "loss", "miou",
             "overall_accuracy", "iou")
_NOT_EVALUATED_KEYS = ("evaluated", "reason")


def check_test(value: Any, where: Where = None) -> None:
    """The ``test`` section: the test split's figures, or why there are none."""
    c, f = _Checker(where), "card.test"
    if not isinstance(value, Mapping):
        c.fail(f, f"must be a dict, not {show(value)}")
    if value.get("evaluated") is False:
        c.keys(f, value, _NOT_EVALUATED_KEYS)
        c.text(f"{f}.reason", value["reason"])
        return
    if value.get("evaluated") is not True:
        c.fail(f"{f}.evaluated", f"must be true or false, not {show(value.get('evaluated'))}")
    c.keys(f, value, TEST_KEYS)
    if value["split"] != "test":
        c.fail(f"{f}.split", f"must be 'test', not {show(value['split'])}")
    for key in ("epoch", "patches", "pixels"):
        c.count(f"{f}.{key}", value[key])
    c.number(f"{f}.loss", value["loss"])
    c.share(f"{f}.miou", value["miou"])
    c.share(f"{f}.overall_accuracy", value["overall_accuracy"])
    iou = value["iou"]
    if not isinstance(iou, Mapping):
        c.fail(f"{f}.iou", f"must be a dict of class name to IoU, not {show(iou)}")
    for name, v in iou.items():
        c.share(f"{f}.iou.{name}", v)
