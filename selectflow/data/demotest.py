"""The demo's fresh test set and its answer checkers (the yardstick of ``snakemake compare``).

* :func:`make_demo_testset` → clean Alpaca records written by the demo's own templates with
  another seed, none of them in the pool (compared on normalised prompt + response), each
  with a ``kind`` (``topic.template``). Only templates whose value space is larger than what
  the pool can hold are tested (:data:`TEST_KINDS`); the others (the capital of one of 20
  countries, one of 12 animals' habitat, …) are all in any demo pool of a few thousand
  records, so no record of theirs can be both new and clean.
* :func:`check_answer` → whether a generated answer is right. Each kind has its own checker,
  which reads the facts the answer must state from the *prompt* (the sum of the two numbers,
  the capital of the named country, …) and looks for them as whole words in the answer; it
  never reads the reference answer, so a differently worded right answer passes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable

from selectflow.data import demo

# kind -> (topic, template index in demo._TOPICS, largest number drawn): 999 where the pool's
# 2..99 range is all used up by a few thousand records (parity, print, loop bounds)
TEST_KINDS: dict[str, tuple[str, int, int]] = {
    "arithmetic.add": ("arithmetic", 0, 99),
    "arithmetic.times": ("arithmetic", 1, 99),
    "arithmetic.subtract": ("arithmetic", 2, 99),
    "arithmetic.even": ("arithmetic", 3, 999),
    "geography.trip": ("geography", 3, 99),
    "cooking.recipe": ("cooking", 0, 99),
    "cooking.boil": ("cooking", 1, 99),
    "programming.print": ("programming", 2, 999),
    "programming.loop": ("programming", 3, 999),
    "animals.story": ("animals", 3, 99),
    "animals.zoo": ("animals", 4, 99),
}

_COUNTRY = {c.lower(): (capital, continent) for c, capital, continent in demo._COUNTRIES}
_ANIMAL = {a: (habitat, diet) for a, habitat, diet, _ in demo._ANIMALS}


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[\w.()+*/-]+", text.lower())) + " "


def _states(answer: str, *facts) -> bool:
    """Whether ``answer`` states every fact as a whole word or phrase (case-insensitive)."""
    body = _words(answer)
    return all(re.search(r"(?<![\w-])" + re.escape(str(f).lower()) + r"(?![\w])", body) for f in facts)


def _numbers(prompt: str) -> list[int]:
    return [int(v) for v in re.findall(r"\d+", prompt)]


def _country(prompt: str) -> tuple[str, str]:
    for name, facts in _COUNTRY.items():
        if re.search(r"\b" + re.escape(name) + r"\b", prompt.lower()):
            return facts
    raise ValueError(f"no demo country in {prompt!r}")


def _animal(prompt: str) -> tuple[str, str]:
    for name, facts in _ANIMAL.items():
        if re.search(r"\b" + re.escape(name) + r"s?\b", prompt.lower()):
            return facts
    raise ValueError(f"no demo animal in {prompt!r}")


def _food(prompt: str) -> str:
    return next(f for f in demo._FOODS if f in prompt.lower())


def _even(prompt: str, answer: str) -> bool:
    words = set(re.findall(r"[a-z]+", answer.lower()))
    parity = "even" if _numbers(prompt)[0] % 2 == 0 else "odd"
    return parity in words and ({"even", "odd"} - {parity}).isdisjoint(words)


CHECKERS: dict[str, Callable[[str, str], bool]] = {
    "arithmetic.add": lambda p, a: _states(a, sum(_numbers(p))),
    "arithmetic.times": lambda p, a: _states(a, _numbers(p)[0] * _numbers(p)[1]),
    "arithmetic.subtract": lambda p, a: _states(a, _numbers(p)[1] - _numbers(p)[0]),  # "Subtract b from a"
    "arithmetic.even": _even,
    "geography.trip": lambda p, a: _states(a, _numbers(p)[0], *_country(p)),
    "cooking.recipe": lambda p, a: _states(a, _food(p), "minutes") and any(_states(a, s) for s in demo._SPICES),
    "cooking.boil": lambda p, a: _states(a, _food(p), "minutes") and bool(re.search(r"\d", a)),
    "programming.print": lambda p, a: f"print({_numbers(p)[0]})" in a.replace(" ", ""),
    "programming.loop": lambda p, a: f"range(1,{_numbers(p)[1] + 1})" in a.replace(" ", "") and "print" in a,
    "animals.story": lambda p, a: _states(a, *_animal(p)),
    "animals.zoo": lambda p, a: _states(a, *_animal(p)),
}


def check_answer(kind: str, prompt: str, answer: str) -> bool:
    """Whether ``answer`` answers the demo prompt of ``kind`` right (see the module docstring)."""
    return bool(CHECKERS[kind](prompt, answer))


def make_demo_testset(
    n_per_kind: int, seed: int, exclude: Callable[[dict], bool], kinds: Iterable[str] = TEST_KINDS
) -> list[dict]:
    """``n_per_kind`` clean records per kind, none for which ``exclude(record)`` holds, no two alike.

    ``exclude`` says whether a record is in the pool (the caller compares normalised text).
    Raises ``ValueError`` when a kind cannot give that many new records.
    """
    out: list[dict] = []
    for kind in kinds:
        topic, index, number_max = TEST_KINDS[kind]
        rng = random.Random(f"{seed}:{kind}")
        seen: set[tuple[str, str, str]] = set()
        tries = 0
        while len(seen) < n_per_kind:
            tries += 1
            if tries > 200 * n_per_kind:
                raise ValueError(
                    f"test kind {kind} gave only {len(seen)} records that are not in the pool "
                    f"(of {n_per_kind} asked); ask for fewer per kind"
                )
            rec = demo.fill_template(rng, demo._TOPICS[topic][index], number_max)
            key = (rec["instruction"], rec["input"], rec["output"])
            if key in seen or exclude(rec):
                continue
            seen.add(key)
            out.append({"id": f"test-{kind}-{len(seen) - 1:03d}", **rec, "kind": kind})
    return out
