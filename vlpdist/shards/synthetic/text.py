"""The world's words: classes, attributes, genres, templates, and the vocabulary built from them.

Every word any generator can emit comes from a table here, so the vocabulary is complete by
construction; `build_vocab` collects them and the generators check for [UNK] anyway.
"""

from __future__ import annotations

import os
import re

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# (singular, plural, alt-text words: synonyms first, no hypernyms) by superclass. The order
# interleaves superclasses so that any prefix (num_classes) keeps every superclass.
CLASS_TABLE = [
    ("animal", "dog", "dogs", ("puppy", "pooch")),
    ("vehicle", "car", "cars", ("automobile", "sedan")),
    ("furniture", "chair", "chairs", ("seat", "stool")),
    ("food", "pizza", "pizzas", ("slice", "flatbread")),
    ("item", "cup", "cups", ("mug", "teacup")),
    ("person", "person", "people", ("actor", "model")),
    ("prop", "gun", "guns", ("pistol", "weapon")),
    ("animal", "cat", "cats", ("kitten", "kitty")),
    ("vehicle", "bus", "buses", ("coach", "minibus")),
    ("furniture", "table", "tables", ("desk", "counter")),
    ("food", "cake", "cakes", ("dessert", "cupcake")),
    ("item", "bottle", "bottles", ("flask", "jar")),
    ("person", "child", "children", ("kid", "toddler")),
    ("prop", "ghost", "ghosts", ("spirit", "phantom")),
    ("animal", "horse", "horses", ("pony", "stallion")),
    ("vehicle", "bicycle", "bicycles", ("bike", "cycle")),
    ("furniture", "sofa", "sofas", ("couch", "settee")),
    ("food", "apple", "apples", ("fruit", "pippin")),
    ("item", "book", "books", ("novel", "paperback")),
    ("prop", "rocket", "rockets", ("spaceship", "shuttle")),
    ("animal", "bird", "birds", ("parrot", "sparrow")),
    ("vehicle", "boat", "boats", ("ship", "yacht")),
    ("furniture", "bed", "beds", ("mattress", "bunk")),
    ("food", "banana", "bananas", ("plantain", "fruit")),
    ("item", "phone", "phones", ("smartphone", "cellphone")),
    ("prop", "robot", "robots", ("android", "droid")),
    ("animal", "cow", "cows", ("cattle", "calf")),
    ("vehicle", "train", "trains", ("locomotive", "railway")),
    ("furniture", "bench", "benches", ("pew", "seating")),
    ("food", "sandwich", "sandwiches", ("snack", "burger")),
    ("item", "umbrella", "umbrellas", ("parasol", "brolly")),
    ("prop", "sword", "swords", ("blade", "saber")),
    ("animal", "sheep", "sheep", ("lamb", "ewe")),
    ("vehicle", "plane", "planes", ("airplane", "aircraft")),
    ("furniture", "lamp", "lamps", ("lantern", "chandelier")),
    ("food", "donut", "donuts", ("pastry", "doughnut")),
    ("item", "laptop", "laptops", ("computer", "notebook")),
    ("prop", "heart", "hearts", ("valentine", "locket")),
    ("animal", "elephant", "elephants", ("mammoth", "tusker")),
    ("vehicle", "truck", "trucks", ("lorry", "pickup")),
    ("item", "clock", "clocks", ("watch", "timepiece")),
    ("prop", "flower", "flowers", ("rose", "bouquet")),
    ("animal", "giraffe", "giraffes", ("okapi", "longneck")),
    ("item", "bag", "bags", ("backpack", "handbag")),
    ("item", "kite", "kites", ("glider", "windsock")),
    ("item", "ball", "balls", ("football", "baseball")),
]
# Hypernyms, as an alt-text writer (or a lazy annotator) would use them.
SUPER_WORDS = {
    "animal": "animal",
    "vehicle": "vehicle",
    "furniture": "furniture",
    "food": "food",
    "item": "object",
    "person": "human",
    "prop": "thing",
}
# Background "stuff": detector classes that frame scenes; ground stuff sits at the bottom.
STUFF = ("grass", "road", "floor", "water", "sand", "snow", "sky", "wall")
GROUND_STUFF = 6
# Ordered so that neighbours look alike (their feature shifts correlate, annotators confuse them).
COLORS = ("red", "orange", "yellow", "brown", "green", "blue",
          "purple", "pink", "white", "gray", "black")  # fmt: skip
ALT_COLORS = ("crimson", "amber", "golden", "chocolate", "emerald", "navy",
              "violet", "rosy", "snowy", "silver", "dark")  # fmt: skip
SIZES = ("small", "large")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six",
                "seven", "eight", "nine", "ten", "eleven", "twelve")  # fmt: skip
RELATIONS = ("to the left of", "to the right of", "above", "below", "next to", "near")

CAPTION_TEMPLATES = (
    "{a} {rel} {b} .",
    "there {be} {a} in the picture .",
    "{a} and {b} on the {stuff} .",
    "a photo of {a} and {b} .",
    "{a} , {b} and {c} .",
    "{a} on the {stuff} .",
    "a picture of {a} .",
    "a photo of {a} .",
    "a view of {a} on the {stuff} .",
)
ALT_STYLES = (
    "stock photo of",
    "illustration of",
    "close up of",
    "portrait of",
    "vintage photo of",
    "cartoon of",
    "vector image of",
    "view of",
)
ALT_ADJECTIVES = ("beautiful", "cute", "funny", "modern", "lovely", "amazing", "old")
ALT_PLACES = (
    "in the city",
    "on the beach",
    "at the park",
    "in the studio",
    "at the premiere",
    "during the festival",
    "on a sunny day",
    "against a white background",
)
ALT_SCENES = ("the city skyline", "the mountains at sunset", "the festival crowd", "the coastline")

YESNO = ("yes", "no")
UNANSWERABLE, UNSUITABLE = "unanswerable", "unsuitable"
# {ref} is a definite description ("pizza", "large pizza", "green food") that fits exactly
# one object of the image; see captions.Writer.describe.
VQA_TEMPLATES = {
    "exists_attr": "is there {a} {color} {cls} ?",
    "exists": "is there {a} {cls} in the picture ?",
    "is_color": "is the {ref} {color} ?",
    "is_size": "is the {ref} {size} ?",
    "count": "how many {plural} are there ?",
    "count_color": "how many {color} {plural} are in the picture ?",
    "what_color": "what color is the {ref} ?",
    "which_super": "which {ref} is {color} ?",
    "what_is_color": "what is the {ref} ?",
}
VIZWIZ_TEMPLATES = {
    "what_this": "what is this ?",
    "tell_me": "can you tell me what this is ?",
    "what_color": "what color is this {ref} ?",
    "is_this": "is this {a} {cls} ?",
    "count": "how many {plural} are there ?",
}
# Non-visual predicates (singular, plural): make a true visual claim unverifiable (neutral).
PREDICATES = (
    ("is sleeping", "are sleeping"),
    ("is for sale", "are for sale"),
    ("is brand new", "are brand new"),
    ("belongs to a family", "belong to a family"),
    ("is waiting for the owner", "are waiting for the owner"),
    ("is very expensive", "are very expensive"),
    ("is a birthday gift", "are birthday gifts"),
    ("is broken inside", "are broken inside"),
)
# A visual predicate, true or false like the claim it extends (keeps neutral from owning "is").
VISUAL_PREDICATE = "on the {stuff}"
HYPOTHESIS_TEMPLATES = {
    "exists": "there is {a} {color} {cls} .",
    "count": "there are {number} {plural} .",
    "color": "the {ref} is {color} .",
    "pred": "the {ref} {pred} .",
    "pred_plural": "{number} {plural} {pred} .",
}

# MM-IMDB genres: label names as the dataset spells them, with plot words that hint at them.
GENRES = (
    ("Action", ("explosive", "chase", "mission", "fight", "hero", "rescue")),
    ("Comedy", ("funny", "hilarious", "clumsy", "prank", "wacky", "silly")),
    ("Drama", ("struggle", "grief", "memories", "secret", "tragic", "lonely")),
    ("Horror", ("haunted", "nightmare", "terror", "cursed", "blood", "creepy")),
    ("Romance", ("love", "kiss", "wedding", "passion", "heartbroken", "romantic")),
    ("Sci-Fi", ("galaxy", "alien", "future", "planet", "laser", "cyborg")),
    ("Thriller", ("murder", "detective", "conspiracy", "suspect", "deadly", "spy")),
    ("Family", ("magical", "friendship", "holiday", "cheerful", "together", "adventure")),
    ("War", ("soldiers", "battle", "army", "enemy", "invasion", "wartime")),
    ("Western", ("cowboy", "sheriff", "outlaw", "desert", "ranch", "saloon")),
)
CHARACTERS = ("young woman", "old man", "stranger", "teacher", "doctor", "family", "girl", "boy")
PLACES = ("small town", "big city", "village", "island", "school", "hospital")
GENERIC_KEYWORDS = ("strange", "quiet", "long", "new", "simple", "surprising")
# Keywords mix nouns and adjectives, so they only go where either reads as a theme.
PLOT_TEMPLATES = (
    "a story of {kw} about {who} in a {place} .",
    "when {who} comes to a {place} , it is all {kw} and {kw2} .",
    "{who} and {who2} face a {kw} past before it is too late .",
    "a {kw} year for {who} in a {place} .",
)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def template_words(template: str) -> list[str]:
    return re.sub(r"\{[a-z_0-9]+\}", " ", template).split()


def all_words() -> set[str]:
    """Every word (and punctuation token) the generators can emit."""
    words: set[str] = {"a", "an", "is", "are", ",", ".", "?", "-"}
    for sup, sing, plur, alts in CLASS_TABLE:
        words.update((sup, sing, plur, *alts))
    words.update(SUPER_WORDS.values())
    words.update(STUFF, COLORS, ALT_COLORS, SIZES, NUMBER_WORDS, YESNO)
    words.update((UNANSWERABLE, UNSUITABLE))
    words.update(str(d) for d in range(10))
    groups = [RELATIONS, CAPTION_TEMPLATES, ALT_STYLES, ALT_ADJECTIVES, ALT_PLACES, ALT_SCENES]
    groups += [VQA_TEMPLATES.values(), VIZWIZ_TEMPLATES.values(), HYPOTHESIS_TEMPLATES.values()]
    groups += [[p for pair in PREDICATES for p in pair], CHARACTERS, PLACES, PLOT_TEMPLATES]
    groups += [GENERIC_KEYWORDS, [VISUAL_PREDICATE]]
    for group in groups:
        for t in group:
            words.update(template_words(t))
    for name, kws in GENRES:
        words.update(kws)
        words.update(re.findall(r"[a-z]+|[^a-z\s]", name.lower()))
    return words


def build_vocab() -> list[str]:
    """BERT-style vocab: [PAD]=0, [UNK], [CLS], [SEP], [MASK], then the world's words, sorted."""
    return [*SPECIALS, *sorted(w.lower() for w in all_words())]


def make_tokenizer(directory: str):
    """A lower-casing BertTokenizerFast over the world vocabulary, written to `directory`."""
    from transformers import BertTokenizerFast  # heavy import, only when building

    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(build_vocab()) + "\n")
    # from_pretrained reads vocab.txt under transformers 4 and 5 alike (v5 ignores vocab_file=)
    return BertTokenizerFast.from_pretrained(directory, do_lower_case=True)
