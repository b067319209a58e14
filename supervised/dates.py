"""The surface formats a date is written in, for the date-normalisation task (no torch here:
the spec checks `data.unseen_formats` against these names)."""

from __future__ import annotations

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


#: surface formats of a date; each reads one way only (two-digit years are 1950-2049)
FORMATS = {
    "long": lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    "ordinal": lambda d: f"{_ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",
    "dmy_slash": lambda d: f"{d.day:02d}/{d.month:02d}/{d.year % 100:02d}",
    "dotted": lambda d: f"{d.year}.{d.month}.{d.day}",
    "abbrev": lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}",
    "upper": lambda d: f"{MONTHS[d.month - 1].upper()} {d.day} {d.year}",
    "compact": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
    "weekday": lambda d: f"{DAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
    "abbrev_us": lambda d: f"{MONTHS[d.month - 1][:3]} {d.day}, {d.year}",
    "dmy_dotted": lambda d: f"{d.day}.{d.month}.{d.year}",
    "ordinal_short": lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1][:3]} {d.year}",
}
UNSEEN_DEFAULT = ["abbrev_us", "dmy_dotted"]
