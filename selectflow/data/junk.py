"""The junk suite: ten kinds of junk that real instruction pools hold, planted into clean records.

Each kind is a seeded transformation of one clean record's last (instruction, response)
pair, written back in the record's own format (Alpaca, ShareGPT or OpenAI messages; see
:mod:`selectflow.data.records`), so it applies to any pool:

============== ===========================================================================
kind           the response becomes
============== ===========================================================================
other_answer   the response of another record of the pool (answers swapped)
echo           the instruction, echoed back
truncated      the response cut off mid-word, somewhere in its middle
refusal        refusal / assistant boilerplate ("As an AI language model, ...")
wrong_language the response rendered word by word into a fixed made-up language
char_noise     the response with about one character in six replaced, dropped or doubled
loop           one phrase of the response repeated over and over
empty          nothing (Alpaca); a lone placeholder ("...", "N/A") in the chat formats,
               whose readers refuse an empty turn
keywords       a bag of the response's words, comma-separated, order lost
filler         generic text that fits any instruction and answers none
============== ===========================================================================

The kinds were split once, before anything was tuned, by ``random.Random(23).shuffle`` of
the sorted names: :data:`TUNING_KINDS` may be looked at while a selection is changed,
:data:`HELD_BACK_KINDS` only reported, separately, always. Never change the split.

A planted record keeps its ``id`` and other fields and gets ``planted: junk_<kind>`` — a
label to measure by, never read by the selection.
"""

from __future__ import annotations

import copy
import random
import re
import zlib

JUNK_KINDS = (
    "other_answer",
    "echo",
    "truncated",
    "refusal",
    "wrong_language",
    "char_noise",
    "loop",
    "empty",
    "keywords",
    "filler",
)
TUNING_KINDS = ("refusal", "truncated", "loop", "other_answer", "filler")
HELD_BACK_KINDS = ("empty", "wrong_language", "char_noise", "echo", "keywords")

_REFUSALS = (
    "As an AI language model, I cannot provide an answer to this request.",
    "I'm sorry, but I can't help with that.",
    "As an AI developed to assist users, I do not have personal opinions or the ability to do that.",
    "I apologize, but I am unable to fulfil this request. Is there anything else I can help you with?",
    "Sorry, as a language model I don't have access to that information.",
)
_FILLER = (
    "That is a great question.",
    "There are many factors to consider here.",
    "The answer depends on your specific situation and needs.",
    "In general, it is important to keep things simple.",
    "Many people find this topic interesting.",
    "It is always a good idea to do some research first.",
    "I hope this helps!",
    "Let me know if you have any other questions.",
    "Overall, there is no single right answer.",
    "This can vary from case to case.",
)
_PLACEHOLDERS = ("...", "N/A", "-", "TODO")
_SYLLABLES = ("ka", "lo", "mi", "su", "te", "va", "ri", "no", "ju", "pe", "ha", "ty", "ol", "ek", "ur", "is")
_NOISE = "abcdefghijklmnopqrstuvwxyz0123456789#@%&*~^"
_WORD = re.compile(r"[A-Za-z]+")


def _pair(record: dict) -> tuple[str, str]:
    """(instruction text, response text) of the record's last user turn and last response."""
    if "conversations" in record or "messages" in record:
        turns, role, text = (
            (record["conversations"], "from", "value")
            if "conversations" in record
            else (record["messages"], "role", "content")
        )
        user = next(t[text] for t in reversed(turns) if str(t[role]).lower() in ("human", "user"))
        answer = next(t[text] for t in reversed(turns) if str(t[role]).lower() in ("gpt", "assistant"))
        return _text(user), _text(answer)
    user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return user, record["output"]


def _text(content) -> str:
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content)
    return content


def _with_response(record: dict, response: str) -> dict:
    """A copy of ``record`` whose last response is ``response`` (an empty one becomes a
    placeholder in the chat formats, where the reader would refuse it)."""
    out = copy.deepcopy(record)
    if "conversations" in out or "messages" in out:
        turns, role, text = (
            (out["conversations"], "from", "value") if "conversations" in out else (out["messages"], "role", "content")
        )
        last = max(i for i, t in enumerate(turns) if str(t[role]).lower() in ("gpt", "assistant"))
        turns[last][text] = response
    else:
        out["output"] = response
    return out


def _truncated(rng: random.Random, text: str) -> str:
    if len(text) < 2:
        return text + " and"
    inside = [
        i
        for i in range(len(text) // 3, max(len(text) // 3 + 1, 2 * len(text) // 3))
        if 0 < i < len(text) and text[i - 1].isalnum() and text[i].isalnum()
    ]
    return text[: rng.choice(inside)] if inside else text[: max(1, len(text) // 2)]


def _foreign_word(word: str) -> str:
    h = zlib.crc32(word.lower().encode())
    n = 1 + len(word) // 3
    out = "".join(_SYLLABLES[(h >> (4 * k)) % len(_SYLLABLES)] for k in range(n))
    return out.capitalize() if word[0].isupper() else out


def _char_noise(rng: random.Random, text: str) -> str:
    out = []
    for c in text:
        roll = rng.random()
        if roll < 0.06:
            out.append(rng.choice(_NOISE))
        elif roll < 0.11:
            continue
        elif roll < 0.17:
            out.append(c + c)
        else:
            out.append(c)
    noisy = "".join(out)
    return noisy if noisy.strip() and noisy != text else text + rng.choice(_NOISE) * 3


def _loop(rng: random.Random, text: str) -> str:
    words = text.split() or ["the"]
    size = min(len(words), rng.randint(3, 6))
    start = rng.randrange(len(words) - size + 1)
    return " ".join(words[start : start + size] * rng.randint(15, 40))


def _keywords(rng: random.Random, text: str) -> str:
    words = sorted({w.lower() for w in _WORD.findall(text) if len(w) > 3}) or sorted(set(text.split())) or ["answer"]
    rng.shuffle(words)
    bag = ", ".join(words[: rng.randint(5, 12)])
    return bag if bag != text else bag + ", misc"


def junk_response(kind: str, user: str, response: str, rng: random.Random, donor: str | None = None) -> str:
    """The response of kind ``kind`` for a record with this ``user`` text and ``response``.

    ``donor``: another record's response (needed by ``other_answer``).
    """
    if kind == "other_answer":
        if donor is None:
            raise ValueError("junk kind 'other_answer' needs the response of another record (donor)")
        return donor if donor != response else donor + " " + rng.choice(_FILLER)
    if kind == "echo":
        return user if user != response else user + " " + user
    if kind == "truncated":
        return _truncated(rng, response)
    if kind == "refusal":
        return rng.choice(_REFUSALS)
    if kind == "wrong_language":
        return (
            _WORD.sub(lambda m: _foreign_word(m.group(0)), response)
            if _WORD.search(response)
            else " ".join(_foreign_word(w) for w in user.split()[:12] or ["text"])
        )
    if kind == "char_noise":
        return _char_noise(rng, response)
    if kind == "loop":
        return _loop(rng, response)
    if kind == "empty":
        return ""
    if kind == "keywords":
        return _keywords(rng, response)
    if kind == "filler":
        return " ".join(rng.sample(_FILLER, rng.randint(3, 5)))
    raise ValueError(f"unknown junk kind {kind!r}; one of {', '.join(JUNK_KINDS)}")


def make_junk(record: dict, kind: str, seed: int, donor: dict | None = None) -> dict:
    """A copy of ``record`` (any of the three formats) turned into junk of ``kind``.

    Deterministic for (record, kind, seed, donor). ``donor``: the record whose response
    ``other_answer`` takes. The copy gets ``planted: junk_<kind>``.
    """
    user, response = _pair(record)
    rng = random.Random(f"{seed}:{kind}:{user}:{response}")
    new = junk_response(kind, user, response, rng, _pair(donor)[1] if donor is not None else None)
    if not new.strip() and ("conversations" in record or "messages" in record):
        new = rng.choice(_PLACEHOLDERS)
    out = _with_response(record, new)
    out["planted"] = f"junk_{kind}"
    return out


def plant_junk(records: list[dict], rate: float, seed: int, kinds: tuple[str, ...] = JUNK_KINDS) -> list[dict]:
    """The pool with about ``rate`` of its records turned into junk, the kinds in turn.

    Only records whose ``planted`` is ``clean`` (or absent) are turned; ``other_answer``
    takes the response of another clean record of the pool. Deterministic by seed.
    """
    rng = random.Random(seed)
    clean = [i for i, r in enumerate(records) if r.get("planted", "clean") == "clean"]
    chosen = sorted(rng.sample(clean, min(len(clean), round(rate * len(records)))))
    order = list(chosen)
    rng.shuffle(order)
    kind_of = {i: kinds[k % len(kinds)] for k, i in enumerate(order)}
    out = list(records)
    for i in chosen:
        donor = None
        if kind_of[i] == "other_answer" and len(clean) > 1:
            donor = records[rng.choice([j for j in clean if j != i])]
        out[i] = make_junk(records[i], kind_of[i], seed, donor)
    return out
