"""Argument types: a value out of range is argparse's usage error, naming the flag."""

from __future__ import annotations

import argparse


def size(text: str) -> int:
    """A size like 1048576, 16MiB or 64KiB."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30}
    lower = text.lower()
    for suffix, factor in units.items():
        if lower.endswith(suffix):
            size = int(float(lower[: -len(suffix)]) * factor)
            break
    else:
        size = int(text)
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size of at least 1 byte")
    return size


def port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: 0 to 65535 (0: any free one)")
    return port


def count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes: 1 or more")
    return count


def seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds: 0 or more")
    return seconds


def positive_seconds(text: str) -> float:
    """A time limit: more than 0 seconds (0 would give up at once)."""
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value
