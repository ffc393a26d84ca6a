"""Admission policies by name."""

from __future__ import annotations

import pytest

from blobtier.errors import InvalidRequest
from blobtier.flash_l3.admission import POLICIES, AdmitAll, RandomAdmission, SecondHit, make_policy


def test_policies_by_name():
    assert sorted(POLICIES) == ["all", "random", "second-hit"]
    assert isinstance(make_policy("all"), AdmitAll)
    assert make_policy("second-hit", window=10).window == 10
    assert make_policy("random", probability=0.25).probability == 0.25
    with pytest.raises(InvalidRequest, match="second-hit"):
        make_policy("lru")


def test_all_admits_everything():
    assert AdmitAll().admit(b"k", 1 << 30)


def test_second_hit_admits_on_the_second_access():
    policy = SecondHit(window=100)
    assert not policy.admit(b"a", 10)  # never seen
    policy.accessed(b"a")
    assert not policy.admit(b"a", 10)  # the first access: a one-off read is not written
    policy.accessed(b"a")
    assert policy.admit(b"a", 10)
    assert not policy.admit(b"b", 10)


def test_second_hit_forgets_accesses_older_than_the_window():
    policy = SecondHit(window=4)
    policy.accessed(b"old")
    for i in range(8):  # two generations of other chunks push it out
        policy.accessed(bytes([i]))
    policy.accessed(b"old")
    assert not policy.admit(b"old", 10)
    policy.accessed(b"old")
    assert policy.admit(b"old", 10)  # within the window again


def test_random_is_size_aware_and_seeded():
    policy = RandomAdmission(0.5, reference_bytes=1 << 20, seed=1)
    assert policy.chance(4096) == 0.5
    assert policy.chance(4 << 20) == 0.125
    small = sum(policy.admit(b"k", 4096) for _ in range(4000))
    large = sum(policy.admit(b"k", 4 << 20) for _ in range(4000))
    assert 1800 < small < 2200 and 380 < large < 620
    a, b = RandomAdmission(0.5, seed=3), RandomAdmission(0.5, seed=3)
    assert [a.admit(b"k", 10) for _ in range(50)] == [b.admit(b"k", 10) for _ in range(50)]
    assert not any(RandomAdmission(0.0).admit(b"k", 1) for _ in range(100))


def test_bad_options_are_refused():
    with pytest.raises(InvalidRequest):
        RandomAdmission(1.5)
    with pytest.raises(InvalidRequest):
        SecondHit(window=0)
