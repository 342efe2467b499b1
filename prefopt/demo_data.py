"""The embedded demo preference dataset: short tasks whose answers a program can check.

Four tasks (arithmetic, unit conversion, sorting, string edits), each with several prompt and
response templates so a model cannot memorise one string. The chosen response is correct and
ends with the line ``Answer: <answer>``; the rejected response is either plausible but wrong
(off by one, wrong unit factor, two elements swapped, one wrong letter) or right but badly
formatted (rambling, no ``Answer:`` line). Responses stay under ~40 tokens so training fits a
2-core CPU. Everything is generated from a seed with `random.Random`, so the same
``(n, seed)`` gives the same rows, byte for byte. Rows follow the conversational schema of
docs/architecture.md plus ``task`` and ``answer``.

    rows = build_demo_dataset(800, seed=0)
    is_correct(rows[0], "... \\nAnswer: 42")
"""

from __future__ import annotations

import random
import re
from decimal import Decimal, InvalidOperation
from typing import Callable

TASKS = ("arithmetic", "unit_conversion", "sorting", "string_edit")

# Share of rejected responses that are right but badly formatted; the rest are wrong answers.
UNFORMATTED_REJECTED_FRACTION = 0.3

WORDS = (
    "apple", "banana", "cherry", "garden", "planet", "river", "window", "pencil", "rocket", "silver",
    "candle", "forest", "bridge", "orange", "purple", "summer", "winter", "yellow", "basket", "dragon",
    "guitar", "island", "jacket", "kitten", "lemon", "market", "number", "pillow", "rabbit", "school",
    "tiger", "violin", "wizard", "zebra", "anchor", "butter", "castle", "desert", "engine", "flower",
    "hammer", "insect", "jungle", "ladder", "mirror", "needle", "oyster", "parrot", "quartz", "saddle",
    "tomato", "umbrella", "velvet", "walnut", "bottle", "coffee", "dinner", "letter", "cookie", "puzzle",
    "strawberry", "balloon", "mississippi", "banner", "pepper", "kettle", "teacher", "cabbage", "giraffe",
    "raccoon", "otter", "button", "carrot", "tunnel", "meadow", "harbor", "lantern", "marble", "pirate",
    "sandal", "turtle", "walrus", "copper", "cotton", "domino", "falcon", "goblin", "helmet", "igloo",
)
VOWELS = set("aeiou")

# Each generator returns (problem_key, prompt, answer, chosen, wrong_rejected, rambling_rejected).
Example = tuple[tuple, str, str, str, str, str]


def format_number(value: Decimal | int) -> str:
    """Plain decimal notation without exponent or trailing zeros: 2500, 2.5, 0.03."""
    text = format(Decimal(value).normalize(), "f")
    return "0" if text in ("-0", "") else text


def _arithmetic(rng: random.Random) -> Example:
    op = rng.choice(("add", "sub", "mul"))
    if op == "add":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        result, symbol, verb = a + b, "+", "sum"
    elif op == "sub":
        a = rng.randint(10, 99)
        b = rng.randint(1, a - 1)
        result, symbol, verb = a - b, "-", "difference"
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 30)
        result, symbol, verb = a * b, "*", "product"
    prompt = rng.choice((
        "What is {a} {s} {b}?",
        "Compute {a} {s} {b}.",
        "Calculate {a} {s} {b} and give the result.",
        "Please work out {a} {s} {b}.",
        "What do you get for {a} {s} {b}?",
    )).format(a=a, s=symbol, b=b)
    answer = str(result)
    wrong = result + rng.choice((-1, 1)) if op == "mul" or rng.random() < 0.7 else result + rng.choice((-10, 10))
    chosen_template = rng.choice((
        "{a} {s} {b} = {r}.\n\nAnswer: {r}",
        "The {verb} of {a} and {b} is {r}.\n\nAnswer: {r}",
        "Working it out: {a} {s} {b} = {r}.\n\nAnswer: {r}",
    ))
    chosen = chosen_template.format(a=a, s=symbol, b=b, r=result, verb=verb)
    rejected_wrong = chosen_template.format(a=a, s=symbol, b=b, r=wrong, verb=verb)
    rambling = rng.choice((
        "Hmm, numbers can be tricky! I think {a} {s} {b} comes out to {r}, if I'm not mistaken, but do double-check.",
        "Sure thing! So basically you take {a} and {b}, and after some thought it should be {r} or so.",
        "Great question. The result, as far as I can tell, is {r}. Math is fun, isn't it?",
    )).format(a=a, s=symbol, b=b, r=result)
    return ("arithmetic", op, a, b), prompt, answer, chosen, rejected_wrong, rambling


# (from unit, to unit, true factor, a plausible wrong factor, values drawn by rng)
_CONVERSIONS = {
    "km_to_m": ("km", "m", "kilometres", "metres", Decimal(1000), Decimal(100)),
    "m_to_km": ("m", "km", "metres", "kilometres", Decimal("0.001"), Decimal("0.01")),
    "kg_to_g": ("kg", "g", "kilograms", "grams", Decimal(1000), Decimal(100)),
    "g_to_kg": ("g", "kg", "grams", "kilograms", Decimal("0.001"), Decimal("0.01")),
    "h_to_min": ("h", "min", "hours", "minutes", Decimal(60), Decimal(100)),
    "min_to_h": ("min", "h", "minutes", "hours", 1 / Decimal(60), Decimal("0.01")),
}


def _conversion_value(rng: random.Random, kind: str) -> Decimal:
    if kind in ("km_to_m", "kg_to_g"):
        return Decimal(rng.randint(1, 99)) / rng.choice((1, 2, 4, 10))
    if kind in ("m_to_km", "g_to_kg"):
        return Decimal(rng.randint(1, 99) * rng.choice((10, 50, 100, 250)))
    if kind == "h_to_min":
        return Decimal(rng.randint(1, 40)) / rng.choice((1, 2, 4))
    return Decimal(rng.randint(1, 48) * 15)  # minutes, so hours come out in quarters


def _unit_conversion(rng: random.Random) -> Example:
    kind = rng.choice(sorted(_CONVERSIONS))
    src, dst, src_name, dst_name, factor, wrong_factor = _CONVERSIONS[kind]
    value = _conversion_value(rng, kind)
    v = format_number(value)
    result = format_number((value * factor).quantize(Decimal("0.0001")))
    wrong = format_number((value * wrong_factor).quantize(Decimal("0.0001")))
    prompt = rng.choice((
        "Convert {v} {src} to {dst_name}.",
        "How many {dst_name} are in {v} {src}?",
        "Express {v} {src_name} in {dst_name}.",
        "What is {v} {src} in {dst}?",
    )).format(v=v, src=src, dst=dst, src_name=src_name, dst_name=dst_name)
    chosen_template = rng.choice((
        "{v} {src} = {r} {dst}.\n\nAnswer: {r}",
        "{v} {src_name} is {r} {dst_name}.\n\nAnswer: {r}",
        "Converting gives {r} {dst}.\n\nAnswer: {r}",
    ))
    fmt = dict(v=v, src=src, dst=dst, src_name=src_name, dst_name=dst_name)
    chosen = chosen_template.format(r=result, **fmt)
    rejected_wrong = chosen_template.format(r=wrong, **fmt)
    rambling = rng.choice((
        "Unit conversions are everywhere in daily life! Here {v} {src} works out to about {r} {dst}, I believe.",
        "Okay, so if you think about it, {v} {src_name} should be {r} {dst_name}. Hope that helps a bit!",
    )).format(r=result, **fmt)
    return ("unit_conversion", kind, v), prompt, result, chosen, rejected_wrong, rambling


def _swap_adjacent(rng: random.Random, items: list) -> list:
    i = rng.randrange(len(items) - 1)
    swapped = list(items)
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    return swapped


def _sorting(rng: random.Random) -> Example:
    if rng.random() < 0.5:
        items = rng.sample(range(1, 100), rng.randint(4, 5))
        descending = rng.random() < 0.3
        ordered = sorted(items, reverse=descending)
        order = "descending" if descending else "ascending"
        prompt = rng.choice((
            "Sort these numbers in {order} order: {xs}.",
            "Put {xs} in {order} order.",
            "Arrange the numbers {xs} from {direction}.",
        )).format(order=order, xs=", ".join(map(str, items)),
                  direction="largest to smallest" if descending else "smallest to largest")
        key = ("sorting", "numbers", order, tuple(sorted(items)))
    else:
        items = rng.sample(WORDS, rng.randint(4, 5))
        ordered = sorted(items)
        prompt = rng.choice((
            "Sort these words alphabetically: {xs}.",
            "Put the words {xs} in alphabetical order.",
            "Alphabetize: {xs}.",
        )).format(xs=", ".join(items))
        key = ("sorting", "words", tuple(ordered))
    answer = ", ".join(map(str, ordered))
    wrong = ", ".join(map(str, _swap_adjacent(rng, ordered)))
    # The list appears once: SmolLM2 spends a token per digit, and responses must stay short.
    chosen_template = rng.choice(("Here they are in order.\n\nAnswer: {r}", "Sorted as asked.\n\nAnswer: {r}", "Answer: {r}"))
    rambling = rng.choice((
        "Sure! Sorting is fun. I'd go with {r} — that looks right to me, more or less.",
        "Let me see... after shuffling them around in my head, I get {r}. Hope that helps!",
    )).format(r=" ".join(map(str, ordered)))
    return key, prompt, answer, chosen_template.format(r=answer), chosen_template.format(r=wrong), rambling


def _wrong_letter(rng: random.Random, word: str) -> str:
    i = rng.randrange(len(word))
    letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != word[i].lower()])
    return word[:i] + (letter.upper() if word[i].isupper() else letter) + word[i + 1:]


def _string_edit(rng: random.Random) -> Example:
    op = rng.choice(("reverse", "uppercase", "count_letter", "length", "remove_vowels"))
    word = rng.choice(WORDS)
    letter = ""
    if op == "reverse":
        answer = word[::-1]
        wrong = _wrong_letter(rng, answer)
        prompts = ("Reverse the word '{w}'.", "Spell '{w}' backwards.", "Write '{w}' in reverse order.")
        explain = ("'{w}' backwards is '{r}'.", "Reversed: {r}.")
    elif op == "uppercase":
        answer = word.upper()
        i = rng.randrange(len(word))
        wrong = answer[:i] + answer[i].lower() + answer[i + 1:]
        prompts = ("Write '{w}' in uppercase.", "Convert '{w}' to capital letters.", "Uppercase the word '{w}'.")
        explain = ("In capitals: {r}.", "'{w}' in uppercase is {r}.")
    elif op == "count_letter":
        letter = rng.choice(sorted(set(word)))
        answer = str(word.count(letter))
        wrong = str(word.count(letter) + 1)
        prompts = ("How many times does the letter '{l}' appear in '{w}'?", "Count the '{l}'s in '{w}'.",
                   "In the word '{w}', how many '{l}' are there?")
        explain = ("'{w}' contains '{l}' {r} time(s).", "Counting '{l}' in '{w}' gives {r}.")
    elif op == "length":
        answer = str(len(word))
        wrong = str(len(word) + rng.choice((-1, 1)))
        prompts = ("How many letters are in '{w}'?", "What is the length of the word '{w}'?", "Count the letters in '{w}'.")
        explain = ("'{w}' has {r} letters.", "The word '{w}' is {r} letters long.")
    else:
        answer = "".join(c for c in word if c not in VOWELS)
        vowel_positions = [i for i, c in enumerate(word) if c in VOWELS]
        keep = rng.choice(vowel_positions)  # leave one vowel in: a plausible slip
        wrong = "".join(c for i, c in enumerate(word) if c not in VOWELS or i == keep)
        prompts = ("Remove the vowels from '{w}'.", "Delete every vowel in '{w}'.", "Write '{w}' without its vowels.")
        explain = ("Without vowels: {r}.", "Dropping a, e, i, o, u from '{w}' leaves {r}.")
    prompt = rng.choice(prompts).format(w=word, l=letter)
    chosen_template = rng.choice(explain) + "\n\nAnswer: {r}"
    chosen = chosen_template.format(w=word, l=letter, r=answer)
    rejected_wrong = chosen_template.format(w=word, l=letter, r=wrong)
    rambling = rng.choice((
        "Words are fascinating! For '{w}' I'd say the result is {r}, though spelling can be tricky.",
        "Okay, so thinking about '{w}' for a moment... it should be {r}, I think. Let me know!",
    )).format(w=word, r=answer)
    return ("string_edit", op, word, letter), prompt, answer, chosen, rejected_wrong, rambling


GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "arithmetic": _arithmetic,
    "unit_conversion": _unit_conversion,
    "sorting": _sorting,
    "string_edit": _string_edit,
}


def build_demo_dataset(n: int, seed: int) -> list[dict]:
    """``n`` preference rows with distinct problems, deterministic in ``(n, seed)``.

    Tasks are drawn uniformly at random. A problem (task, operation, operands) appears at most
    once, whatever its phrasing, so no split can leak a problem from training into evaluation.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    seen: set[tuple] = set()
    rows: list[dict] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not draw {n} distinct demo problems (got {len(rows)}); use a smaller n")
        task = rng.choice(TASKS)
        key, prompt, answer, chosen, rejected_wrong, rambling = GENERATORS[task](rng)
        if key in seen:
            continue
        seen.add(key)
        rejected = rambling if rng.random() < UNFORMATTED_REJECTED_FRACTION else rejected_wrong
        user = {"role": "user", "content": prompt}
        rows.append({
            "prompt_id": f"demo-{len(rows):06d}",
            "prompt": prompt,
            "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [dict(user), {"role": "assistant", "content": rejected}],
            "score_chosen": 1.0,
            "score_rejected": 0.0,
            "task": task,
            "answer": answer,
        })
    return rows


_ANSWER_LINE = re.compile(r"^[\s*#>_-]*answer[\s*_]*:(.*)$", re.IGNORECASE)
_NUMBER = re.compile(r"^[-+]?\d+(?:\.\d+)?")


def normalize_answer(text: str) -> str:
    """Strip markdown, quotes, brackets and a trailing period; one space after each comma."""
    for _ in range(2):  # "**42**." needs the period and the markdown stripped in turn
        text = text.strip().strip("*_`").strip().rstrip(".").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].strip()
    text = re.sub(r"\s*,\s*", ", ", text)
    return re.sub(r"\s+", " ", text)


def extract_answer(text: str) -> str | None:
    """The normalised content of the last ``Answer:`` line, or None when there is none or it is empty."""
    found = None
    for line in text.splitlines():
        match = _ANSWER_LINE.match(line)
        if match:
            found = match.group(1)
    if found is None:
        return None
    return normalize_answer(found) or None


def _as_number(text: str) -> Decimal | None:
    """The number at the start of ``text`` when the rest is at most a unit word ("2500 m")."""
    match = _NUMBER.match(text)
    if not match or not re.fullmatch(r"\s*[A-Za-z]*", text[match.end():]):
        return None
    try:
        return Decimal(match.group(0))
    except InvalidOperation:
        return None


def is_correct(row: dict, generated_text: str) -> bool:
    """Whether the last ``Answer:`` line of ``generated_text`` matches ``row["answer"]``.

    Numeric answers compare as numbers (``2500``, ``2500.0`` and ``2500 m`` all match 2500);
    everything else compares as normalised, case-sensitive text.
    """
    got = extract_answer(generated_text)
    if got is None:
        return False
    expected = normalize_answer(str(row["answer"]))
    expected_number = _as_number(expected)
    if expected_number is not None and expected == format_number(expected_number):
        got_number = _as_number(got)
        return got_number is not None and got_number == expected_number
    return got == expected
