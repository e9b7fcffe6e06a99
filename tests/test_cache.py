"""The one cache (issue 36): bounded, least recently used first out, and never a home for a call
that raised."""
import pytest
import torch

import unshared
import unshared.functional as UF
from unshared import _cache, _plans


def test_the_least_recently_used_entry_goes_first(monkeypatch):
    monkeypatch.setattr(_cache, "LIMIT", 3)
    monkeypatch.setattr(_cache, "CACHE", type(_cache.CACHE)())
    for key in "abc":
        _cache.remember(("test", key), key)
    _cache.CACHE.move_to_end(("test", "a"))  # what a plan's lookup does on a hit
    _cache.remember(("test", "d"), "d")
    assert [k[1] for k in _cache.CACHE] == ["c", "a", "d"]


def test_a_call_keeps_one_plan_and_a_hit_makes_it_the_newest():
    _plans.clear()
    x, w = torch.randn(2, 3, 9), torch.randn(7, 4, 3, 3)
    UF.locally_connected1d(x, w)
    plans = [k for k in _cache.CACHE if k[0] == "locally_connected1d"]
    assert len(plans) == 1
    UF.locally_connected1d(torch.randn(5, 3, 9), w)  # another batch size: another key
    UF.locally_connected1d(x, w)
    assert [k for k in _cache.CACHE if k[0] == "locally_connected1d"][-1] == plans[0]
    assert len(_cache.CACHE) <= _cache.LIMIT


def test_a_call_that_raises_keeps_nothing_and_raises_again():
    _plans.clear()
    layer = unshared.LocallyConnected1d(3, 4, 3, input_size=9)
    bad = torch.randn(2, 3, 9, dtype=torch.float64)  # the layer's weight is float32
    for _ in range(2):
        with pytest.raises(TypeError, match="weight dtype torch.float32 differs from input dtype torch.float64"):
            layer(bad)
    assert not [k for k in _cache.CACHE if k[0] == "locally_connected1d"]
