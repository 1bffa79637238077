"""VQA answers as a shard set stores them: the official normalisation and the answer counts
of `labels.json` (what the writer records and a loader builds its vocabulary from).

Normalisation follows the official VQA evaluation (`vqaEval.py`, also what EvalAI scores
with), applied the same way to human answers, vocabulary entries and predictions, so a
prediction is compared in exactly the space the vocabulary was built in. Quirks of the
official script are kept on purpose (numbers would otherwise not match published ones):
"none" maps to "0", a period is dropped unless a digit follows it, and punctuation is
deleted outright (not replaced by a space) whenever the answer contains a digit-comma-digit.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Mapping

NORMALIZATION = "vqa-official"

# The official contractions table as key:value pairs. Its capitalised keys ("Im", "Ive",
# "Id've", "I'dve") are left out: the script lowercases before the lookup, so they never
# match. "somebody'd" -> "somebodyd" is a typo in the official table, kept for parity.
_CONTRACTIONS_TABLE = """
    aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't
    couldn'tve:couldn't've couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't
    hadnt:hadn't hadnt've:hadn't've hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd
    hed've:he'd've he'dve:he'd've hes:he's howd:how'd howll:how'll hows:how's isnt:isn't
    itd:it'd itd've:it'd've it'dve:it'd've itll:it'll maam:ma'am mightnt:mightn't
    mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't
    mustve:must've neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't
    ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't shed've:she'd've
    she'dve:she'd've shouldve:should've shouldnt:shouldn't shouldnt've:shouldn't've
    shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've
    somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's
    someoned:someone'd someoned've:someone'd've someone'dve:someone'd've
    someonell:someone'll someones:someone's somethingd:something'd
    somethingd've:something'd've something'dve:something'd've somethingll:something'll
    thats:that's thered:there'd thered've:there'd've there'dve:there'd've therere:there're
    theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've theyll:they'll
    theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've
    weve:we've werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've
    whens:when's whered:where'd wheres:where's whereve:where've whod:who'd whod've:who'd've
    who'dve:who'd've wholl:who'll whos:who's whove:who've whyll:why'll whyre:why're
    whys:why's wont:won't wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've
    wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
    yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd
    youd've:you'd've you'dve:you'd've youll:you'll youre:you're youve:you've
"""
_CONTRACTIONS = dict(pair.split(":") for pair in _CONTRACTIONS_TABLE.split())
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
            "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# Periods and apostrophes/colons are not in the official list; periods are handled below.
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
          "@", "`", ",", "?", "!")  # fmt: skip
# The official pattern's leading "(?!<=\d)" is a lookahead that never fires (a mistyped
# lookbehind), so in effect a period survives only when a digit follows it: "3.5" stays.
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official call passes re.UNICODE (= 32) positionally as `count`: at most 32 periods go.
_PERIOD_COUNT = 32


def _process_punctuation(text: str) -> str:
    # The official test looks at the input text, not the text being rewritten.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCT:
        if delete_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def _process_digit_article(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


@functools.lru_cache(maxsize=1 << 16)  # answers repeat heavily; loaders call this per sample
def normalize_answer(ans: str) -> str:
    """The official VQA normalisation of one answer (idempotent on its own output)."""
    text = ans.replace("\n", " ").replace("\t", " ").strip().lower()
    return _process_digit_article(_process_punctuation(text))


def _majority(answers: Iterable[str]) -> str | None:
    counts = Counter(a for a in map(normalize_answer, answers) if a)
    if not counts:
        return None
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def target_answer(text_record: dict) -> str | None:
    """The normalised answer a question counts for when building a vocabulary:
    `multiple_choice_answer` (VQA v2's consensus) when present, else the most frequent
    normalised human answer (ties: lexicographically smallest); None without answers."""
    mca = text_record.get("multiple_choice_answer")
    if isinstance(mca, str) and normalize_answer(mca):
        return normalize_answer(mca)
    return _majority(text_record.get("answers") or ())


def count_answers(records: Iterable[dict]) -> Counter[str]:
    """Questions per target answer: each answered question counts its target once. With
    min_count 9 on VQA v2 train+val this is bottom-up-attention's 3129-answer vocabulary."""
    counts: Counter[str] = Counter()
    for rec in records:
        if rec.get("kind") != "question" or not rec.get("answers"):
            continue
        target = target_answer(rec)
        if target:
            counts[target] += 1
    return counts


def vocab_from_counts(counts: Mapping[str, int], min_count: int = 9) -> list[str]:
    """Answers seen at least `min_count` times, most frequent first, ties alphabetical, so
    the same counts always give the same answer indices."""
    kept = [(a, c) for a, c in counts.items() if c >= min_count]
    return [a for a, _ in sorted(kept, key=lambda kv: (-kv[1], kv[0]))]


def answers_doc(counts: Counter) -> dict:
    """The JSON document stored as "answers" in `labels.json`: all counts, so any min_count
    can be chosen later without rereading the dataset."""
    ordered = vocab_from_counts(counts, min_count=1)
    return {
        "normalization": NORMALIZATION,
        "unit": "questions per target answer",
        "counts": {a: int(counts[a]) for a in ordered},
    }
