"""Signals that stop a run are delivered between subimages (geoddu/engine/interrupts.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import geoddu
from geoddu.engine.interrupts import HeldSignals


class Stopped(Exception):
    """What this module's SIGTERM handler raises (a KeyboardInterrupt would stop pytest)."""


@pytest.fixture
def sigterm_raises():
    def handler(signum, frame):
        raise Stopped(signum)

    before = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, before)


def _signal_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # the handler runs at the next bytecode the main thread executes


def test_a_signal_waits_for_the_boundary(sigterm_raises):
    with HeldSignals() as held:
        _signal_self()  # held: nothing is raised here
        with pytest.raises(Stopped):
            held.deliver()
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_a_held_signal_is_delivered_at_the_end_of_the_block(sigterm_raises):
    with pytest.raises(Stopped), HeldSignals():
        _signal_self()
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_a_second_signal_is_delivered_at_once(sigterm_raises):
    with HeldSignals():
        _signal_self()
        with pytest.raises(Stopped):
            _signal_self()
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_a_signal_mid_run_unwinds_at_a_subimage(tmp_path, scene, checkpoint, sigterm_raises):
    """A SIGTERM while the model computes in the main thread ends the run at the next subimage
    boundary, not inside the forward, with nothing written. Raised inside the forward (or
    inside the writer's queue), it could hang the run in a lost wake-up."""
    model = geoddu.load_model(checkpoint)
    encoded = []

    def in_the_forward(*_) -> None:
        encoded.append(1)
        if len(encoded) == 2:
            _signal_self()

    model.net.encoder.register_forward_hook(in_the_forward)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Stopped) as caught:
        geoddu.segment(scene, out / "map.tif", model, probabilities=str(out / "p.tif"))
    assert "in_the_forward" not in {entry.name for entry in caught.traceback}
    assert caught.traceback[-1].name == "handler"  # called by the runner's delivery
    assert len(encoded) == 2  # delivered before the next subimage's forward
    assert list(out.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises
