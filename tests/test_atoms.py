"""Target and version validation: what a user may type as a build target, and the message
they get when it is wrong."""

from __future__ import annotations

import pytest

from swarmnode.errors import UserError
from swarmnode.portage.atoms import MAX_TARGETS, validate_cpv, validate_targets


@pytest.mark.parametrize("target", [
    "app-misc/foo", "=app-misc/foo-1.0", ">=cat/pkg-2:0", "~app-misc/foo-1.0",
    "app-misc/foo:0/1", "app-misc/foo::swarm-example", "app-misc/foo[color]",
    "@world", "@system", "@selected",
])
def test_sets_and_atoms_are_accepted(target: str) -> None:
    assert validate_targets([target]) == [target]


def test_surrounding_whitespace_is_stripped() -> None:
    assert validate_targets([" app-misc/foo\n", "@world "]) == ["app-misc/foo", "@world"]


@pytest.mark.parametrize("target, reason", [
    ("foo", "missing category"),
    ("app-misc/foo-1.0", "a version needs an operator"),
    ("=app-misc/foo", "an operator needs a version"),
    ("!app-misc/foo", "a blocker cannot be built"),
    ("app-misc/*", "wildcards are not allowed"),
    ("app misc/foo", "portage does not accept it"),
    ("", "empty"),
])
def test_invalid_atoms_say_why_and_show_an_example(target: str, reason: str) -> None:
    with pytest.raises(UserError) as exc:
        validate_targets(["app-misc/ok", target])
    msg = exc.value.message
    assert msg.startswith(f"invalid atom '{target}': {reason}")
    assert "use e.g. app-misc/foo" in msg and "\n" not in msg


def test_unknown_sets_are_rejected_with_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"unknown set '@nope': known sets are .*@world"):
        validate_targets(["@nope"])
    # Sets about an installed system select nothing on an empty build root.
    with pytest.raises(UserError, match="unknown set '@installed'"):
        validate_targets(["@installed"])


def test_profile_defined_sets_are_accepted_when_named() -> None:
    assert validate_targets(["@tools"], extra_sets=["tools"]) == ["@tools"]


def test_bounds_on_count_and_length() -> None:
    assert len(validate_targets(["app-misc/foo"] * MAX_TARGETS)) == MAX_TARGETS
    with pytest.raises(UserError, match="too many targets"):
        validate_targets(["app-misc/foo"] * (MAX_TARGETS + 1))
    with pytest.raises(UserError, match="longer than 256 characters"):
        validate_targets(["app-misc/" + "x" * 250])
    with pytest.raises(UserError, match="no targets"):
        validate_targets([])
    with pytest.raises(UserError, match="must be a string"):
        validate_targets([42])  # type: ignore[list-item]


@pytest.mark.parametrize("cpv", ["app-misc/foo-1.0", "dev-libs/libgreet-1.0-r3",
                                 "dev-lang/toylang-2.1_p20240101"])
def test_full_versions_are_accepted(cpv: str) -> None:
    assert validate_cpv(cpv) == cpv


@pytest.mark.parametrize("cpv", ["app-misc/foo", "foo-1.0", "=app-misc/foo-1.0",
                                 "app-misc/foo-1.0::repo", "a/b/c-1.0", " app-misc/foo-1.0", ""])
def test_anything_else_is_not_a_package_version(cpv: str) -> None:
    with pytest.raises(UserError, match="invalid package version .*: expected e.g. app-misc/foo"):
        validate_cpv(cpv)
