"""Names of sources, pieces, nodes and tags: the one safe character set (docs/configuration.md).

A name travels in topics (`data.<source>`, matched by byte prefix), in headers, in file names
(`{source}`, `{tag}`) and in log and state file names, so it must not be able to reach past
its place there: a NUL byte would end the topic early (`data.a\\0` is a prefix of another
source's topic), `*` and a trailing `.` are the wildcards of subscriptions, `/` and `..`
leave a directory. The rule: 1 to 64 characters of `A-Z a-z 0-9 _ . -`, not starting with
`.` or `-` and not ending with `.`. Every name used by the configs and ENRGDAQ's examples
(`sensor1`, `pc_metrics`, `store-csv`, `host.example.org`) fits it.
"""

from __future__ import annotations

import re

__all__ = ["MAX_NAME", "BadName", "check_name", "check_tag", "check_topic", "host_node"]

MAX_NAME = 64
"""The longest name (characters); a file name built from one stays well under 255 bytes."""

_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_-])?")
_RULE = "1-64 of A-Z a-z 0-9 _ . -, not starting with . or - nor ending with ."
_TOPIC = re.compile(r"[A-Za-z0-9_.-]*\*?")


class BadName(ValueError):
    """A name outside the safe character set; the message is one line saying what is wrong."""


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_name(kind: str, value: str) -> str:
    """`value` if it is a valid name of this kind (source, piece, node), else BadName."""
    if not isinstance(value, str):
        raise BadName(f"{kind} name must be a string, got {type(value).__name__}")
    if _NAME.fullmatch(value) is None:
        raise BadName(f"bad {kind} name {_shown(value)}: expected {_RULE}")
    return value


def check_tag(value: str) -> str:
    """A tag is a name that may be empty (no tag)."""
    return check_name("tag", value) if value != "" else value


def check_topic(pattern: str) -> str:
    """A topic pattern (`data.sensor1`, `data.`, `data.sen*`, `` for all): name characters and
    dots, with `*` only at the end; a NUL byte or an inner `*` is refused (BadName)."""
    if _TOPIC.fullmatch(pattern) is None:
        raise BadName(
            f"bad topic {_shown(pattern)}: expected name characters (A-Z a-z 0-9 _ . -) "
            "and dots, with * only at the end"
        )
    return pattern


def host_node(hostname: str) -> str:
    """A node name made from a host name: characters outside the set become `_`, leading `.`
    and `-` and trailing `.` are dropped, cut to MAX_NAME; never fails (`localhost` if empty)."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "_", hostname).lstrip(".-")[:MAX_NAME].rstrip(".")
    return text or "localhost"
